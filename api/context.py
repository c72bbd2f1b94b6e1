"""What a route takes from its app and its request: the process's producer, the request id, the job observers."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request

from api.requestid import record_of
from api.requestid import request_id_of as _request_id_of
from broker.producer import Producer
from broker.tenants import current_tenant
from serving.jobs import JobObserver, Observers
from serving.requests import ChatCompletionRequest, CompletionRequest

# The endpoint a resumable stream came from, in its record: a chat job's stream is resumed as a chat stream only.
CHAT_ENDPOINT = "chat.completions"
COMPLETIONS_ENDPOINT = "completions"


def producer_of(request: Request) -> Producer:
    producer: Producer = request.app.state.producer
    return producer


def request_id_of(request: Request) -> str | None:
    return _request_id_of(request.scope)


def request_log_of(request: Request, model: str | None = None) -> JobObserver | None:
    """The request's log record, told which model the request is for."""
    record = record_of(request.scope)
    if record is not None and model is not None:
        record.model = model
    return record


def observer_of(request: Request, model: str | None = None) -> JobObserver:
    """The metrics, the request's log line, its relay spans and its tenant's token charges, which watch a
    generation request's jobs."""
    state = request.app.state
    return Observers(state.metrics, request_log_of(request, model), state.relay_spans, state.tenants)


def owner_of(request: Request) -> str:
    """Who a stream or a stored response belongs to: a digest of the API key the request came with, read as the
    key check reads it (``Authorization: Bearer`` or ``x-api-key``), never the key itself; "" without keys."""
    if not request.app.state.settings.api_keys and current_tenant.get() is None:
        return ""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        token = request.headers.get("x-api-key", "")
    return hashlib.sha256(token.strip().encode()).hexdigest()


def resume_record(request: Request, body: ChatCompletionRequest, created: int) -> dict[str, Any]:
    """What a streamed chat job's log keeps for resuming its stream (api/resume.py): the owner and the request's
    options (not its messages, which were the worker's business only)."""
    options = body.model_dump(mode="json", exclude={"messages"}, exclude_unset=True)
    return {"owner": owner_of(request), "endpoint": CHAT_ENDPOINT, "created": created, "request": options}


def completion_resume_record(request: Request, body: CompletionRequest, created: int) -> dict[str, Any]:
    """The same for a streamed completion: its options and how many prompts (jobs) it has, since only one of a
    single prompt can be resumed; its prompt only when the stream echoes it (the worker's business otherwise)."""
    options = body.model_dump(mode="json", exclude={"prompt"}, exclude_unset=True)
    prompts = body.prompts()
    record = {"owner": owner_of(request), "endpoint": COMPLETIONS_ENDPOINT, "created": created, "request": options}
    record["prompts"] = len(prompts)
    if body.echo and len(prompts) == 1:
        record["prompt"] = prompts[0]
    return record
