"""Chunk streams: the data lines of an OpenAI stream around a request's chunks, with no HTTP framework inside.

:func:`data_lines` yields what each SSE ``data:`` line holds: the chunks as JSON, an OpenAI-shaped error chunk if
a job fails midway, then ``[DONE]``; the API wraps it into its SSE response.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel

from broker.errors import QueuechatError
from broker.jobevents import JobEvents
from serving.errors import error_of
from serving.jobs import close_all

DONE_MARKER = "[DONE]"


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object as a dict (responses carry :class:`serving.responses.Usage`)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def data_lines(
    streams: Sequence[JobEvents], chunks: AsyncIterator[BaseModel | dict[str, Any]]
) -> AsyncIterator[str]:
    """The chunks as JSON, an error chunk if the job fails midway, then ``[DONE]``. The jobs are closed however
    the stream ends, a client disconnect included."""
    try:
        async for chunk in chunks:
            yield chunk.model_dump_json() if isinstance(chunk, BaseModel) else dumps(chunk)
    except QueuechatError as exc:
        yield dumps(error_of(exc))
    finally:
        close_all(streams)
    yield DONE_MARKER
