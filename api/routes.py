"""The OpenAI endpoints: models, chat completions and completions, streamed (SSE) or not."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from api.errors import error_body
from api.jobs import Collected, chat_job, completion_jobs, merged, submit_all
from api.schemas import ChatCompletionRequest, CompletionRequest
from broker.errors import QueuechatError
from broker.producer import JobEvents, Producer
from broker.schemas import Accepted, Delta, Done

router = APIRouter()


def producer_of(request: Request) -> Producer:
    producer: Producer = request.app.state.producer
    return producer


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the broker answers; 503 (and which part is down) otherwise, for load balancers and compose."""
    producer = producer_of(request)
    up = await producer.ping()
    body = {
        "status": "ok" if up else "degraded",
        "broker": "up" if up else "down",
        "events": "connected" if producer.router.connected else "disconnected",
        "open_jobs": producer.router.channels,
    }
    return JSONResponse(body, 200 if up else 503)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    live = await producer_of(request).live_models()
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(min(w.card.started for w in workers)),
            "owned_by": "queuechat",
            "max_model_len": max((w.card.max_model_len or 0) for w in workers) or None,
        }
        for name, workers in sorted(live.items())
    ]
    return {"object": "list", "data": data}


async def _sse(streams: list[JobEvents], chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The SSE body: the chunks, an OpenAI-shaped error chunk if the job fails midway, then ``[DONE]``.
    The jobs are closed however the stream ends, a client disconnect included."""
    try:
        async for chunk in chunks:
            yield chunk
    except QueuechatError as exc:
        yield dumps(error_body(exc.message, exc.type, exc.code, exc.param))
    finally:
        for s in streams:
            s.close()
    yield "[DONE]"


def stream_response(body: AsyncIterator[str], producer: Producer) -> EventSourceResponse:
    """An SSE response that, when the server is told to stop, gets the drain timeout to finish instead of being
    cut at once (sse-starlette's default)."""
    return EventSourceResponse(body, ping=15, shutdown_grace_period=producer.settings.drain_timeout)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _prompt_tokens(streams: list[JobEvents]) -> int:
    return sum(e.pending_first.prompt_tokens for e in streams if isinstance(e.pending_first, Accepted))


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    producer = producer_of(request)
    job = chat_job(body, producer.settings.request_timeout)
    streams = await submit_all(producer, [job], request.app.state.metrics)
    response_id = "chatcmpl-" + job.id.removeprefix("job-")  # the job id: findable in worker logs
    created = int(time.time())
    if body.stream:
        chunks = _chat_stream(streams, body, response_id, created)
        return stream_response(_sse(streams, chunks), producer)
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
    prompt_tokens = _prompt_tokens(streams)
    choices = []
    for index, choice in sorted(collected.choices.items()):
        logprobs = _chat_logprobs(choice.token_ids, choice.logprobs) if body.logprobs else None
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(choice.text)},
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": _usage(prompt_tokens, collected.completion_tokens),
    }


def _chat_logprobs(token_ids: list[int], logprobs: list[float] | None) -> dict[str, Any]:
    return {
        "content": [
            {"token": str(t), "logprob": lp, "bytes": None, "top_logprobs": []}
            for t, lp in zip(token_ids, logprobs or [], strict=False)
        ]
    }


async def _chat_stream(
    streams: list[JobEvents], body: ChatCompletionRequest, response_id: str, created: int
) -> AsyncIterator[str]:
    head = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": body.model}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return dumps({**head, "choices": choices, **extra})

    completion_tokens = 0
    for index in range(body.n):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])  # fmt: skip
    async for position, event in merged(streams):
        if isinstance(event, Delta):
            # With logprobs every token is reported, also one whose text is still held back (a partial
            # character, a possible stop string).
            if event.text or (body.logprobs and event.token_ids):
                streams[position].committed = True  # from here on, a restart elsewhere would repeat text
                logprobs = _chat_logprobs(event.token_ids, event.logprobs) if body.logprobs else None
                yield chunk([{"index": event.index, "delta": {"content": event.text}, "logprobs": logprobs,
                              "finish_reason": None}])  # fmt: skip
        elif isinstance(event, Done):
            completion_tokens += event.usage.completion_tokens
            yield chunk([{"index": event.index, "delta": {}, "logprobs": None,
                          "finish_reason": event.finish_reason.value}])  # fmt: skip
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=_usage(_prompt_tokens(streams), completion_tokens))


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    producer = producer_of(request)
    jobs = completion_jobs(body, producer.settings.request_timeout)
    streams = await submit_all(producer, jobs, request.app.state.metrics)
    response_id = "cmpl-" + jobs[0].id.removeprefix("job-")
    created = int(time.time())
    prompts = body.prompts()
    if body.stream:
        chunks = _completion_stream(streams, body, prompts, response_id, created)
        return stream_response(_sse(streams, chunks), producer)
    try:
        collected = Collected()
        async for position, event in merged(streams):
            if isinstance(event, Accepted):  # the job restarted on another worker
                collected.restart(range(position * body.n, (position + 1) * body.n))
            elif isinstance(event, Delta | Done):
                collected.add(position * body.n + event.index, event)
    finally:
        for s in streams:
            s.close()
    choices = []
    for index, choice in sorted(collected.choices.items()):
        text = "".join(choice.text)
        if body.echo:
            prompt = prompts[index // body.n]
            if isinstance(prompt, str):
                text = prompt + text
        choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": choice.finish_reason})
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": _usage(_prompt_tokens(streams), collected.completion_tokens),
    }


async def _completion_stream(
    streams: list[JobEvents],
    body: CompletionRequest,
    prompts: list[str | list[int]],
    response_id: str,
    created: int,
) -> AsyncIterator[str]:
    head = {"id": response_id, "object": "text_completion", "created": created, "model": body.model}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return dumps({**head, "choices": choices, **extra})

    completion_tokens = 0
    if body.echo:
        for position, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                for i in range(body.n):
                    yield chunk([{"index": position * body.n + i, "text": prompt, "logprobs": None,
                                  "finish_reason": None}])  # fmt: skip
    async for position, event in merged(streams):
        if isinstance(event, Delta):
            if event.text:
                streams[position].committed = True
                yield chunk([{"index": position * body.n + event.index, "text": event.text, "logprobs": None,
                              "finish_reason": None}])  # fmt: skip
        elif isinstance(event, Done):
            completion_tokens += event.usage.completion_tokens
            yield chunk([{"index": position * body.n + event.index, "text": "", "logprobs": None,
                          "finish_reason": event.finish_reason.value}])  # fmt: skip
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=_usage(_prompt_tokens(streams), completion_tokens))
