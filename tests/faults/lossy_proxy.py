"""A loopback TCP proxy to Redis that loses one reply: the first reply carrying a marker (a job's text, as
XREADGROUP hands the job over) is swallowed, and so is everything after it on that connection, which is held open
for ``hold`` seconds (longer than the client's socket timeout) and then reset. Redis has delivered the job; the
client never sees it, times out and reconnects. Every other connection is forwarded untouched."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.faults.proxy import CuttableProxy


class LossyProxy(CuttableProxy):
    def __init__(self, target_host: str, target_port: int, marker: bytes, hold: float) -> None:
        super().__init__(target_host, target_port)
        self.marker = marker
        self.hold = hold
        self.swallowed = threading.Event()  # set once the reply was lost
        self.healed = threading.Event()  # set when the held connection was reset

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._forward(reader, up_writer), self._reply(up_reader, writer, up_writer))

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _reply(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                if not self.swallowed.is_set() and self.marker in data:
                    self.swallowed.set()
                    await asyncio.sleep(self.hold)  # the reply is lost; the connection stays up, silent
                    writer.transport.abort()
                    upstream.transport.abort()
                    self.healed.set()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
