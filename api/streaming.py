"""The SSE response around a chunk stream's data lines (:mod:`serving.streams` makes the lines), each event with
an ``id:`` so a client that lost the stream can resume it (:mod:`api.eventids`, :mod:`api.resume`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sse_starlette import EventSourceResponse, ServerSentEvent

from api.eventids import EventIds, format_id
from broker.jobevents import JobEvents
from broker.producer import Producer
from broker.settings import Settings


async def sse_events(
    streams: Sequence[JobEvents], lines: AsyncIterator[str], after: tuple[int, int] | None = None
) -> AsyncIterator[dict[str, str]]:
    """The data lines as SSE events with ids; with ``after`` (a resumed stream) only the events past that id.
    An id is taken when its line arrives, so it names the job events the line was written from."""
    ids = EventIds(streams)
    async for line in lines:
        event_id = ids.next()
        if after is None or event_id > after:
            yield {"id": format_id(event_id), "data": line}


class KeepAlive(ServerSentEvent):
    """A comment line with no blank line after it: bytes on the wire, and no event. The official clients' SSE
    decoders (openai-python 3.x, anthropic's) dispatch an event at any blank line once an event had an ``id:``,
    with empty data, which they then fail to parse as JSON; sse-starlette's own ping ends with a blank line."""

    def encode(self) -> bytes:
        return b": ping\r\n"


def event_source(events: AsyncIterator[dict[str, str]], settings: Settings) -> EventSourceResponse:
    """An SSE response with keep-alives (``QUEUECHAT_SSE_PING_INTERVAL``) that no client takes for an event,
    which, when the server is told to stop, gets the drain timeout to finish instead of being cut at once
    (sse-starlette's default)."""
    return EventSourceResponse(
        events,
        ping=settings.sse_ping_interval,
        ping_message_factory=KeepAlive,
        shutdown_grace_period=settings.drain_timeout,
    )


def stream_response(events: AsyncIterator[dict[str, str]], producer: Producer) -> EventSourceResponse:
    return event_source(events, producer.settings)
