"""uvicorn's h11 protocol with a header-read timeout: a connection that has not sent a whole request head within
``header_timeout`` seconds (since it opened, or since its last response) is closed.

uvicorn's own timers do not cover this: its keep-alive timer starts only after a response and stops at the first
byte of the next request, so a client that sends its headers a byte at a time (slowloris) holds its connection, and
a file descriptor, for ever. 1,100 such sockets exhausted the open-file limit; the accept loop then logged a
traceback per attempt and no normal request was served.

Between requests the keep-alive timer alone governs an idle connection: the header timer starts again only with the
first byte of the next head. Were it armed at the end of a response, it would close idle connections after
``header_timeout`` whatever the keep-alive, and a client whose pool keeps them longer would send its next request
on a socket the server is closing (a "Connection error" for that request).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout: float = 10.0  # set per server by :func:`with_header_timeout`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        # IDLE: no complete request head since the timer was armed (a request being served is SEND_BODY or DONE)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a new connection owes a whole head within the timeout

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the first bytes of the next head: it gets as long as the first did
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm_header_timer()  # idle now: uvicorn's keep-alive timer decides

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn's ``http=`` with this timeout (a subclass: uvicorn instantiates it itself)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})
