"""``GET /v1/chat/completions/{id}/stream``: a client that lost its stream gets the rest of it, from any API
replica, within the job's log life (``QUEUECHAT_EVENT_LOG_TTL`` after the job ends).

Every SSE event of a streamed chat completion has an ``id:`` (api/eventids.py). A client that reconnects with
``Last-Event-ID: <the last id it got>`` (the header, or ``?last_event_id=``) receives the chunks after that one,
then the rest live, with no duplicate and no gap: the job's log is replayed through the same code that wrote the
first stream, and the chunks up to that id are left out. Without an id the whole stream is sent again.

Only the API key that created the stream may resume it: the submission records a hash of the key (never the key)
in the job's log. A wrong key is refused by the key check (401); another valid key, an unknown or expired id, or a
response that was not streamed all get the same 404, so a key learns nothing of other keys' streams.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import ValidationError

from api.context import owner_of, producer_of
from api.errors import ERROR_RESPONSES
from api.eventids import parse_id
from api.streaming import sse_events, stream_response
from broker.errors import InvalidRequest, NotFound
from serving.chat import ChatStream
from serving.jobs import reattach
from serving.requests import ChatCompletionRequest

router = APIRouter(responses=ERROR_RESPONSES)

COMPLETION_ID = re.compile(r"^chatcmpl-[0-9a-f]{32}$")
# The resumed request is rebuilt from the recorded options; its messages were the worker's business only.
_NO_MESSAGES = [{"role": "user", "content": "-"}]


def _not_found(completion_id: str) -> NotFound:
    return NotFound(f"No resumable stream with id '{completion_id}' (it may have expired).", param="id")


@router.get("/v1/chat/completions/{completion_id}/stream", response_model=None)
async def resume_chat_stream(
    completion_id: str,
    request: Request,
    last_event_id_header: str | None = Header(default=None, alias="Last-Event-ID"),
    last_event_id: str | None = Query(default=None),
) -> Any:
    if not COMPLETION_ID.match(completion_id):
        raise _not_found(completion_id)
    given = last_event_id_header if last_event_id_header is not None else last_event_id
    after = None
    if given is not None and given.strip():
        after = parse_id(given)
        if after is None:
            raise InvalidRequest(
                f"Last-Event-ID {given[:40]!r} is not an event id of this stream", param="Last-Event-ID"
            )
    producer = producer_of(request)
    job_id = "job-" + completion_id.removeprefix("chatcmpl-")
    meta = (await producer.job_log(job_id)).meta or {}
    record = meta.get("resume")
    if not isinstance(record, dict) or record.get("owner") != owner_of(request):
        raise _not_found(completion_id)
    try:
        body = ChatCompletionRequest.model_validate({**record.get("request", {}), "messages": _NO_MESSAGES})
    except ValidationError as exc:
        raise _not_found(completion_id) from exc
    events = await reattach(producer, job_id, meta)
    stream = ChatStream(body, [events], completion_id, int(record.get("created", 0)))
    return stream_response(sse_events([events], stream.lines(), after=after), producer)
