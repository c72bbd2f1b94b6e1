"""``GET /v1/chat/completions/{id}/stream`` and ``GET /v1/completions/{id}/stream``: a client that lost its stream
gets the rest of it, from any API replica, within the job's log life (``QUEUECHAT_EVENT_LOG_TTL`` after the job
ends).

Every SSE event of a streamed response has an ``id:`` (api/eventids.py). A client that reconnects with
``Last-Event-ID: <the last id it got>`` (the header, or ``?last_event_id=``) receives the chunks after that one,
then the rest live, with no duplicate and no gap: the job's log is replayed through the same code that wrote the
first stream, and the chunks up to that id are left out. Without an id the whole stream is sent again. Only a
response of one job can be resumed: a chat completion, or a completion of one prompt (its ``n`` choices are one
job); a completion of several prompts is refused with a 400 that says so.

Only the API key that created the stream may resume it: the submission records a hash of the key (never the key)
in the job's log, with the endpoint that streamed it. A wrong key is refused by the key check (401); another
valid key, an unknown or expired id, a response that was not streamed, or the id of another endpoint's response
all get the same 404, so a key learns nothing of other keys' streams.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import ValidationError

from api.context import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, owner_of, producer_of
from api.errors import ERROR_RESPONSES
from api.eventids import parse_id
from api.streaming import sse_events, stream_response
from broker.errors import InvalidRequest, NotFound
from broker.jobevents import JobEvents
from serving.chat import ChatStream
from serving.completions import CompletionStream
from serving.jobs import reattach
from serving.requests import ChatCompletionRequest, CompletionRequest

router = APIRouter(responses=ERROR_RESPONSES)

CHAT_ID = re.compile(r"^chatcmpl-[0-9a-f]{32}$")
COMPLETION_ID = re.compile(r"^cmpl-[0-9a-f]{32}$")
# A resumed request is rebuilt from the recorded options; its messages (or prompt) were the worker's business only.
_NO_MESSAGES = [{"role": "user", "content": "-"}]
_NO_PROMPT = "-"


@dataclass
class _Recorded:
    """A resumable stream's job, as its log recorded it at submission."""

    response_id: str
    job_id: str
    meta: dict[str, Any]
    record: dict[str, Any]
    after: tuple[int, int] | None  # the client's last event id (None: from the start)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"No resumable stream with id '{response_id}' (it may have expired).", param="id")


def _last_event_id(header: str | None, query: str | None) -> tuple[int, int] | None:
    given = header if header is not None else query
    if given is None or not given.strip():
        return None
    after = parse_id(given)
    if after is None:
        raise InvalidRequest(f"Last-Event-ID {given[:40]!r} is not an event id of this stream", param="Last-Event-ID")
    return after


async def _recorded(
    request: Request, response_id: str, id_pattern: re.Pattern[str], endpoint: str, after: tuple[int, int] | None
) -> _Recorded:
    """The stream's record, when the caller's key created it on ``endpoint``; else the 404 every stranger gets."""
    if not id_pattern.match(response_id):
        raise _not_found(response_id)
    job_id = "job-" + response_id.partition("-")[2]
    meta = (await producer_of(request).job_log(job_id)).meta or {}
    record = meta.get("resume")
    if (
        not isinstance(record, dict)
        or record.get("owner") != owner_of(request)
        or record.get("endpoint", CHAT_ENDPOINT) != endpoint  # records written before there were two had none
    ):
        raise _not_found(response_id)
    return _Recorded(response_id, job_id, meta, record, after)


async def _replay(request: Request, recorded: _Recorded, lines_of: Callable[[JobEvents], AsyncIterator[str]]) -> Any:
    """The job from its first event (read back from its log) to its last (live), through the same stream code that
    wrote the first stream, less the events up to the client's last id."""
    producer = producer_of(request)
    events = await reattach(producer, recorded.job_id, recorded.meta)
    return stream_response(sse_events([events], lines_of(events), after=recorded.after), producer)


@router.get("/v1/chat/completions/{completion_id}/stream", response_model=None)
async def resume_chat_stream(
    completion_id: str,
    request: Request,
    last_event_id_header: str | None = Header(default=None, alias="Last-Event-ID"),
    last_event_id: str | None = Query(default=None),
) -> Any:
    after = _last_event_id(last_event_id_header, last_event_id)
    recorded = await _recorded(request, completion_id, CHAT_ID, CHAT_ENDPOINT, after)
    try:
        body = ChatCompletionRequest.model_validate({**recorded.record.get("request", {}), "messages": _NO_MESSAGES})
    except ValidationError as exc:
        raise _not_found(completion_id) from exc
    created = int(recorded.record.get("created", 0))
    return await _replay(request, recorded, lambda events: ChatStream(body, [events], completion_id, created).lines())


@router.get("/v1/completions/{completion_id}/stream", response_model=None)
async def resume_completion_stream(
    completion_id: str,
    request: Request,
    last_event_id_header: str | None = Header(default=None, alias="Last-Event-ID"),
    last_event_id: str | None = Query(default=None),
) -> Any:
    after = _last_event_id(last_event_id_header, last_event_id)
    recorded = await _recorded(request, completion_id, COMPLETION_ID, COMPLETIONS_ENDPOINT, after)
    prompts = recorded.record.get("prompts", 1)
    if prompts != 1:
        # Its events interleave several jobs' logs, which no id orders: it was numbered, but cannot be replayed.
        raise InvalidRequest(
            f"Completion '{completion_id}' has {prompts} prompts; only a completion of one prompt can be resumed.",
            param="id",
        )
    options = {**recorded.record.get("request", {}), "prompt": recorded.record.get("prompt", _NO_PROMPT)}
    try:
        body = CompletionRequest.model_validate(options)
    except ValidationError as exc:
        raise _not_found(completion_id) from exc
    created = int(recorded.record.get("created", 0))
    return await _replay(
        request, recorded, lambda events: CompletionStream(body, [events], completion_id, created).lines()
    )
