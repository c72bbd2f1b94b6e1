"""What the chat and completions endpoints share: the SSE body around a job's chunks, and usage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from sse_starlette import EventSourceResponse

from api.errors import error_body
from api.eventids import EventIds, format_id
from broker.errors import QueuechatError
from broker.producer import JobEvents, Producer
from broker.schemas import Accepted


def producer_of(request: Request) -> Producer:
    producer: Producer = request.app.state.producer
    return producer


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


async def sse_body(
    streams: list[JobEvents], chunks: AsyncIterator[str], after: tuple[int, int] | None = None
) -> AsyncIterator[dict[str, str]]:
    """The SSE body: the chunks, an OpenAI-shaped error chunk if the job fails midway, then ``[DONE]``, each
    with an ``id:`` (api/eventids.py); with ``after`` (a resumed stream) only the chunks past that id.
    The jobs are closed however the stream ends, a client disconnect included."""
    ids = EventIds(streams)
    try:
        async for chunk in chunks:
            event_id = ids.next()
            if after is None or event_id > after:
                yield {"id": format_id(event_id), "data": chunk}
    except QueuechatError as exc:
        yield {"id": format_id(ids.next()), "data": dumps(error_body(exc.message, exc.type, exc.code, exc.param))}
    finally:
        for s in streams:
            s.close()
    yield {"id": format_id(ids.next()), "data": "[DONE]"}


def stream_response(body: AsyncIterator[dict[str, str]], producer: Producer) -> EventSourceResponse:
    """An SSE response that, when the server is told to stop, gets the drain timeout to finish instead of being
    cut at once (sse-starlette's default)."""
    return EventSourceResponse(body, ping=15, shutdown_grace_period=producer.settings.drain_timeout)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def prompt_tokens_of(streams: list[JobEvents]) -> int:
    return sum(e.pending_first.prompt_tokens for e in streams if isinstance(e.pending_first, Accepted))
