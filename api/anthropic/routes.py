"""``POST /v1/messages`` (streamed or not) and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from api.anthropic.errors import anthropic_error_body
from api.anthropic.schemas import CountTokensRequest, MessagesRequest
from api.anthropic.translate import StreamTranslator, count_request, to_chat_request, to_message, translated_stream
from api.chat import chat_answer, chat_stream
from api.errors import validation_message
from api.jobs import chat_job, merged, submit_all
from api.schemas import ChatCompletionRequest
from api.streaming import dumps, producer_of, prompt_tokens_of
from broker.errors import InvalidRequest, QueuechatError
from broker.producer import JobEvents
from broker.schemas import Job, JobKind

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
    producer = producer_of(request)
    chat = _as_chat(to_chat_request, body)
    if not body.stream:
        return to_message(await chat_answer(producer, chat, request.app.state.metrics))
    job = chat_job(chat, producer.settings.request_timeout)
    streams = await submit_all(producer, [job], request.app.state.metrics)  # errors before the first token: 4xx
    response_id = "chatcmpl-" + job.id.removeprefix("job-")
    translator = StreamTranslator(body.model, prompt_tokens_of(streams))
    chunks = chat_stream(streams, chat, response_id, int(time.time()))
    events = translated_stream(chunks, translator, response_id)
    return EventSourceResponse(_sse(streams, events), ping=15, shutdown_grace_period=producer.settings.drain_timeout)


async def _sse(
    streams: list[JobEvents], events: AsyncIterator[tuple[str, dict[str, Any]]]
) -> AsyncIterator[dict[str, str]]:
    """Named SSE events; a job that fails midway ends the stream with Anthropic's ``error`` event."""
    try:
        async for name, data in events:
            yield {"event": name, "data": dumps(data)}
    except QueuechatError as exc:
        yield {"event": "error", "data": dumps(anthropic_error_body(exc.status, exc.message))}
    finally:
        for s in streams:
            s.close()


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
    )
    streams = await submit_all(producer, [job])
    try:
        async for _ in merged(streams):  # the rest of the job: its done event
            pass
    finally:
        for s in streams:
            s.close()
    return {"input_tokens": prompt_tokens_of(streams)}
