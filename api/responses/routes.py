"""``POST /v1/responses`` (streamed or not, in the background or not), ``GET``/``DELETE /v1/responses/{id}``,
``GET /v1/responses/{id}/input_items`` and ``POST /v1/responses/{id}/cancel``."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from api.context import observer_of, owner_of, producer_of
from api.disconnect import unless_client_leaves
from api.errors import ERROR_RESPONSES
from api.responses.background import BackgroundRuns, relay
from api.responses.generate import answer, open_stream, reopen_stream
from api.responses.schemas import ResponsesRequest
from api.responses.stream_events import StreamTranslator, translated_stream
from api.responses.translate import (
    Event,
    answer_response,
    input_items,
    response_id_of,
    response_object,
    to_chat_request,
)
from api.streaming import event_source
from broker.errors import InvalidRequest, NotFound
from broker.jobevents import JobEvents
from broker.keys import new_job_hex
from broker.responses import RUNNING, TERMINAL, ResponsesSettings, ResponseStore, StoredResponse
from broker.settings import Settings
from serving.errors import validation_message
from serving.requests import ChatCompletionRequest
from serving.streams import dumps

router = APIRouter(responses=ERROR_RESPONSES)

NOT_RESUMABLE = (
    "Only a response created with background=true and stream=true can be streamed again, while its events are kept "
    "(QUEUECHAT_EVENT_LOG_TTL after it ended)."
)
_detached: set[asyncio.Task[Any]] = set()  # record updates started where awaiting is not possible


def _store(request: Request) -> ResponseStore:
    store: ResponseStore | None = getattr(request.app.state, "response_store", None)
    if store is None:
        producer = producer_of(request)
        store = ResponseStore(producer.client, producer.keys, ResponsesSettings().responses_ttl)
        request.app.state.response_store = store
    return store


def _runs(request: Request) -> BackgroundRuns:
    runs: BackgroundRuns | None = getattr(request.app.state, "response_runs", None)
    if runs is None:
        runs = request.app.state.response_runs = BackgroundRuns()
    return runs


def _as_chat(body: ResponsesRequest, conversation: list[dict[str, Any]]) -> ChatCompletionRequest:
    try:
        return to_chat_request(body, conversation)
    except ValidationError as exc:  # what only the chat request checks (a tool's schema, ...)
        message, param = validation_message(exc.errors())
        raise InvalidRequest(message, param=param) from None


async def _stored(request: Request, response_id: str) -> StoredResponse:
    stored = await _store(request).get(response_id, owner_of(request))
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.")
    return stored


def _later(coroutine: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(coroutine)
    _detached.add(task)
    task.add_done_callback(_detached.discard)


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    producer = producer_of(request)
    # A background run outlives its request, so only the metrics watch it; otherwise the request's log line too.
    metrics = request.app.state.metrics if body.background else observer_of(request, body.model)
    store = _store(request)
    owner = owner_of(request)
    conversation: list[dict[str, Any]] = []
    if body.previous_response_id:
        previous = await store.get(body.previous_response_id, owner)
        if previous is None:
            raise InvalidRequest(
                f"Previous response with id '{body.previous_response_id}' not found.", param="previous_response_id"
            )
        if previous.status in RUNNING:
            raise InvalidRequest(
                f"Previous response with id '{body.previous_response_id}' is still {previous.status}.",
                param="previous_response_id",
            )
        conversation = previous.continued()
    items = input_items(body)
    conversation += items
    chat = _as_chat(body, conversation)
    created_at = time.time()

    if body.background:
        # the job hex of a response begins with its model's cluster slot, as every job id does (broker/keys.py)
        response = response_object(body, f"resp_{new_job_hex(chat.model)}", created_at, "queued")
        await store.add(response, owner, conversation, len(items))
        sink = _runs(request).start(store, producer, metrics, body, chat, copy.deepcopy(response))
        if sink is None:
            return response
        return _event_stream(relay(sink), producer.settings)

    if not body.stream:
        # a client that hangs up before its answer is ready has its job cancelled
        completion = await unless_client_leaves(request, answer(producer, chat, metrics))
        if isinstance(completion, Response):
            return completion
        response = answer_response(body, completion, response_id_of(completion["id"]), created_at)
        if body.stored:
            await store.add(response, owner, conversation, len(items))
        return response

    job_hex = new_job_hex(chat.model)
    opened = await unless_client_leaves(request, open_stream(producer, chat, metrics, job_hex))
    if isinstance(opened, Response):
        return opened  # the client left while the job was queued: it was cancelled
    streams, chunks = opened  # errors before the first token: 4xx
    response = response_object(body, f"resp_{job_hex}", created_at, "in_progress")
    if body.stored:
        try:
            await store.add(response, owner, conversation, len(items))
        except BaseException:
            for s in streams:
                s.close()
            raise
    translator = StreamTranslator(copy.deepcopy(response))
    events = _stored_at_end(translated_stream(chunks, translator), streams, store if body.stored else None, translator)
    return _event_stream(events, producer.settings)


async def _stored_at_end(
    events: AsyncIterator[Event], streams: list[JobEvents], store: ResponseStore | None, translator: StreamTranslator
) -> AsyncGenerator[Event, None]:
    """The events; then the final response is stored. A client that goes away stops the job, and its stored
    response is ``cancelled``."""
    finished = False
    try:
        async for event in events:
            yield event
        finished = True
    finally:
        for s in streams:
            s.close()
        if store is not None:
            response = translator.response
            status = response["status"] if finished else "cancelled"
            if not finished:
                response["status"] = status
            _later(store.set_status(response["id"], status, allowed_from=RUNNING, response=response))


def _event_stream(events: AsyncGenerator[Event, None], settings: Settings) -> EventSourceResponse:
    async def body() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in events:
                yield {"event": event["type"], "data": dumps(event)}
        finally:
            await events.aclose()  # a client gone while an event was being sent: the job stops now, not at GC

    return event_source(body(), settings)


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(
    response_id: str,
    request: Request,
    stream: bool | None = None,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
    include: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any] | EventSourceResponse:
    if include:
        raise InvalidRequest(f"include {include[0]!r} is not supported: there is nothing to include", param="include")
    if starting_after is not None and not stream:
        raise InvalidRequest("starting_after streams a response again: add stream=true", param="starting_after")
    stored = await _stored(request, response_id)  # another key's response is not found
    if not stream:
        return stored.response
    # A streamed background response again, from any replica, while its job's log lives: the events after
    # ``starting_after`` (a sequence_number), replayed through the same translation, then the rest live.
    reopened = await reopen_stream(producer_of(request), response_id.removeprefix("resp_"))
    if reopened is None:
        raise InvalidRequest(NOT_RESUMABLE, param="stream")
    created, events, chunks = reopened
    translator = StreamTranslator(created)
    after = -1 if starting_after is None else starting_after
    return _event_stream(_after(translated_stream(chunks, translator), after, events), producer_of(request).settings)


async def _after(events: AsyncIterator[Event], after: int, job: JobEvents) -> AsyncGenerator[Event, None]:
    try:
        async for event in events:
            if event["sequence_number"] > after:
                yield event
    finally:
        job.close()


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    await _stored(request, response_id)
    await _store(request).delete(response_id)
    _runs(request).cancel(response_id)  # a background run here stops; on another replica it sees the record gone
    return {"id": response_id, "object": "response", "deleted": True}


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> dict[str, Any]:
    stored = await _stored(request, response_id)
    if not stored.response.get("background"):
        raise InvalidRequest("Only responses created with background=true can be cancelled.", param="response_id")
    if stored.status not in TERMINAL:
        cancelled = {**stored.response, "status": "cancelled"}
        await _store(request).set_status(response_id, "cancelled", allowed_from=RUNNING, response=cancelled)
        _runs(request).cancel(response_id)
    return (await _stored(request, response_id)).response


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    include: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    if include:
        raise InvalidRequest(f"include {include[0]!r} is not supported: there is nothing to include", param="include")
    items = (await _stored(request, response_id)).input_items
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
