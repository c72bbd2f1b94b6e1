"""``POST /v1/chat/completions``, streamed (SSE) or not, with logprobs and function calling."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request

from api.jobs import ChoiceText, Collected, chat_job, merged, submit_all
from api.logprobs import chat_logprobs
from api.metrics import ApiMetrics
from api.resume import resume_record
from api.schemas import ChatCompletionRequest
from api.streaming import dumps, producer_of, prompt_tokens_of, sse_body, stream_response, usage
from api.tools import ToolCall, forced_calls, may_become_call, parse_calls
from broker.producer import JobEvents, Producer
from broker.schemas import Accepted, Delta, Done, TokenLogprob

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    producer = producer_of(request)
    if not body.stream:
        return await chat_answer(producer, body, request.app.state.metrics)
    job = chat_job(body, producer.settings.request_timeout)
    created = int(time.time())
    resume = resume_record(request, body, created)  # so the client can resume the stream (api/resume.py)
    streams = await submit_all(producer, [job], request.app.state.metrics, resume=resume)
    response_id = "chatcmpl-" + job.id.removeprefix("job-")  # the job id: findable in worker logs
    return stream_response(sse_body(streams, _chat_stream(streams, body, response_id, created)), producer)


async def chat_answer(
    producer: Producer,
    body: ChatCompletionRequest,
    metrics: ApiMetrics | None = None,
    *,
    low_priority: bool = False,
) -> dict[str, Any]:
    """A whole chat completion, as the non-streaming endpoint answers it (the Batch API runs its lines here too)."""
    job = chat_job(body, producer.settings.request_timeout)
    streams = await submit_all(producer, [job], metrics, low_priority=low_priority)
    response_id = "chatcmpl-" + job.id.removeprefix("job-")  # the job id: findable in worker logs
    created = int(time.time())
    try:
        collected = Collected()
        async for _, event in merged(streams):
            if isinstance(event, Accepted):  # the job restarted on another worker
                collected.restart(range(body.n))
            elif isinstance(event, Delta | Done):
                collected.add(event.index, event)
    finally:
        for s in streams:
            s.close()
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [_choice(body, index, choice) for index, choice in sorted(collected.choices.items())],
        "usage": usage(prompt_tokens_of(streams), collected.completion_tokens),
    }


def _calls_in(body: ChatCompletionRequest, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a choice's whole text."""
    if body.forced_tools():
        calls = forced_calls(body, text)
        return (None, calls) if calls else (text, [])
    if body.tools_offered():
        content, calls = parse_calls(text)
        return (content or None, calls) if calls else (text, [])
    return text, []


def _choice(body: ChatCompletionRequest, index: int, choice: ChoiceText) -> dict[str, Any]:
    content, calls = _calls_in(body, "".join(choice.text))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish_reason = choice.finish_reason
    if calls:
        message["tool_calls"] = [call.as_openai() for call in calls]
        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(choice.logprobs) if body.logprobs else None,
        "finish_reason": finish_reason,
    }


@dataclass
class _Held:
    """Output of one choice kept back while it may still turn out to be a tool call."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    plain: bool = False  # shown to be ordinary text: passed through from then on


async def _chat_stream(
    streams: list[JobEvents], body: ChatCompletionRequest, response_id: str, created: int
) -> AsyncIterator[str]:
    head = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": body.model}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return dumps({**head, "choices": choices, **extra})

    def content(index: int, text: str, logprobs: list[TokenLogprob] | None) -> str:
        return chunk([{"index": index, "delta": {"content": text},
                       "logprobs": chat_logprobs(logprobs or []) if body.logprobs else None,
                       "finish_reason": None}])  # fmt: skip

    held: dict[int, _Held] = {}
    completion_tokens = 0
    for index in range(body.n):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])  # fmt: skip
    async for position, event in merged(streams):
        if isinstance(event, Delta):
            # With logprobs every token is reported, also one whose text is still held back (a partial
            # character, a possible stop string).
            if not (event.text or (body.logprobs and event.token_ids)):
                continue
            streams[position].committed = True  # from here on, a restart elsewhere would repeat output
            kept = held.setdefault(event.index, _Held(plain=not (body.forced_tools() or body.tools_offered())))
            if kept.plain:
                yield content(event.index, event.text, event.logprobs)
                continue
            kept.text += event.text
            kept.logprobs += event.logprobs or []
            if body.forced_tools() or may_become_call(kept.text):
                continue  # a call is sent whole, once the choice is done
            yield content(event.index, kept.text, kept.logprobs)
            held[event.index] = _Held(plain=True)
        elif isinstance(event, Done):
            completion_tokens += event.usage.completion_tokens
            finish_reason = event.finish_reason.value
            kept = held.pop(event.index, _Held())
            if kept.text:
                text, calls = _calls_in(body, kept.text)
                if calls:
                    yield chunk([{"index": event.index,
                                  "delta": {"tool_calls": [c.as_openai(i) for i, c in enumerate(calls)]},
                                  "logprobs": chat_logprobs(kept.logprobs) if body.logprobs else None,
                                  "finish_reason": None}])  # fmt: skip
                    finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
                elif text:
                    yield content(event.index, text, kept.logprobs)
            yield chunk([{"index": event.index, "delta": {}, "logprobs": None,
                          "finish_reason": finish_reason}])  # fmt: skip
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=usage(prompt_tokens_of(streams), completion_tokens))
