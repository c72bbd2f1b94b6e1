"""The SSE response around a chunk stream's data lines (:mod:`serving.streams` makes the lines), each event with
an ``id:`` so a client that lost the stream can resume it (:mod:`api.eventids`, :mod:`api.resume`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sse_starlette import EventSourceResponse

from api.context import producer_of
from api.eventids import EventIds, format_id
from broker.producer import JobEvents, Producer
from serving.jobs import prompt_tokens_of
from serving.streams import dumps, usage

# producer_of, dumps, usage and prompt_tokens_of are kept for code written against the earlier layout
__all__ = ["dumps", "producer_of", "prompt_tokens_of", "sse_events", "stream_response", "usage"]


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


def stream_response(events: AsyncIterator[dict[str, str]], producer: Producer) -> EventSourceResponse:
    """An SSE response that, when the server is told to stop, gets the drain timeout to finish instead of being
    cut at once (sse-starlette's default)."""
    return EventSourceResponse(events, ping=15, shutdown_grace_period=producer.settings.drain_timeout)
