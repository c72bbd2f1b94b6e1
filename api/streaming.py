"""The SSE response around a chunk stream's data lines (:mod:`serving.streams` makes the lines)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

from api.context import producer_of
from broker.producer import JobEvents, Producer
from serving.jobs import prompt_tokens_of
from serving.streams import data_lines, dumps, usage

# producer_of, dumps, usage, prompt_tokens_of and sse_body are kept for code written against the earlier layout
__all__ = ["dumps", "producer_of", "prompt_tokens_of", "sse_body", "stream_response", "usage"]


def stream_response(lines: AsyncIterator[str], producer: Producer) -> EventSourceResponse:
    """An SSE response that, when the server is told to stop, gets the drain timeout to finish instead of being
    cut at once (sse-starlette's default)."""
    return EventSourceResponse(lines, ping=15, shutdown_grace_period=producer.settings.drain_timeout)


async def sse_body(streams: list[JobEvents], chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Kept for callers of the earlier interface, whose chunks are already JSON text: the chunks, an error chunk
    if the job fails midway, then ``[DONE]``. New code uses a stream's ``lines()``."""
    import json

    async def parsed() -> AsyncIterator[dict[str, object]]:
        async for chunk in chunks:
            yield json.loads(chunk)

    async for line in data_lines(streams, parsed()):
        yield line
