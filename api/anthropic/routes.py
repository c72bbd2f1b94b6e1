"""``POST /v1/messages`` (streamed or not) and ``POST /v1/messages/count_tokens``, on the serving layer's chat."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from api.anthropic.errors import anthropic_error_body
from api.anthropic.schemas import CountTokensRequest, MessagesRequest
from api.anthropic.translate import StreamTranslator, count_request, to_chat_request, to_message, translated_stream
from api.context import observer_of, producer_of, request_id_of
from api.disconnect import unless_client_leaves
from api.streaming import event_source
from broker.errors import InvalidRequest, QueuechatError
from broker.schemas import Job, JobKind
from serving.chat import ChatStream, chat_answer, open_chat_stream
from serving.errors import validation_message
from serving.jobs import close_all, merged, prompt_tokens_of, submit_all
from serving.requests import ChatCompletionRequest
from serving.streams import dumps

router = APIRouter()


def _as_chat(translate: Any, body: Any) -> ChatCompletionRequest:
    try:
        chat: ChatCompletionRequest = translate(body)
    except ValidationError as exc:  # what only the chat request checks (a tool's schema, ...)
        message, param = validation_message(exc.errors())
        raise InvalidRequest(message, param=param) from None
    return chat


@router.post("/v1/messages", response_model=None)
async def create_message(body: MessagesRequest, request: Request) -> Any:
    # A client that hangs up before its answer (or its stream's first event) is ready has its job cancelled.
    return await unless_client_leaves(request, _create_message(body, request))


async def _create_message(body: MessagesRequest, request: Request) -> Any:
    producer, observer, request_id = producer_of(request), observer_of(request, body.model), request_id_of(request)
    chat = _as_chat(to_chat_request, body)
    if not body.stream:
        answer = await chat_answer(producer, chat, observer, request_id=request_id)
        return to_message(answer.model_dump(mode="json"))
    stream = await open_chat_stream(producer, chat, observer, request_id=request_id)  # errors before a token: 4xx
    translator = StreamTranslator(body.model, prompt_tokens_of(stream.streams))
    events = translated_stream(_chunks(stream), translator, stream.response_id)
    return event_source(_sse(stream, events), producer.settings)


async def _chunks(stream: ChatStream) -> AsyncIterator[dict[str, Any]]:
    async for chunk in stream.chunks():
        yield chunk.model_dump(mode="json", exclude_none=True)


async def _sse(stream: ChatStream, events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[dict[str, str]]:
    """Named SSE events; a job that fails midway ends the stream with Anthropic's ``error`` event."""
    try:
        async for name, data in events:
            yield {"event": name, "data": dumps(data)}
    except QueuechatError as exc:
        yield {"event": "error", "data": dumps(anthropic_error_body(exc.status, exc.message))}
    finally:
        close_all(stream.streams)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    """The prompt's tokens as the model's own tokenizer and chat template count them (a ``tokenize`` job)."""
    producer = producer_of(request)
    chat = _as_chat(count_request, body)
    job = Job(
        kind=JobKind.TOKENIZE,
        model=chat.model,
        messages=[m.as_template_message() for m in chat.messages],
        tools=[t.model_dump(exclude_none=True) for t in chat.tools] if chat.tools_offered() and chat.tools else None,
        deadline=time.time() + producer.settings.request_timeout,
        request_id=request_id_of(request),
    )
    streams = await submit_all(producer, [job])
    try:
        async for _ in merged(streams):  # the rest of the job: its done event
            pass
    finally:
        close_all(streams)
    return {"input_tokens": prompt_tokens_of(streams)}
