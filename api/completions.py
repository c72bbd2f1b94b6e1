"""``POST /v1/completions``: prompts as text or token ids, echo, logprobs, best_of; streamed (SSE) or not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from api.jobs import ChoiceText, Collected, completion_jobs, merged, submit_all
from api.logprobs import CompletionLogprobs
from api.metrics import ApiMetrics
from api.schemas import CompletionRequest
from api.streaming import dumps, producer_of, prompt_tokens_of, sse_body, stream_response, usage
from broker.producer import JobEvents, Producer
from broker.schemas import Accepted, Delta, Done

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    producer = producer_of(request)
    if not body.stream:
        return await completion_answer(producer, body, request.app.state.metrics)
    jobs = completion_jobs(body, producer.settings.request_timeout)
    streams = await submit_all(producer, jobs, request.app.state.metrics)
    response_id = "cmpl-" + jobs[0].id.removeprefix("job-")
    chunks = _completion_stream(streams, body, body.prompts(), response_id, int(time.time()))
    return stream_response(sse_body(streams, chunks), producer)


async def completion_answer(
    producer: Producer, body: CompletionRequest, metrics: ApiMetrics | None = None, *, low_priority: bool = False
) -> dict[str, Any]:
    """A whole completion, as the non-streaming endpoint answers it (the Batch API runs its lines here too)."""
    jobs = completion_jobs(body, producer.settings.request_timeout)
    streams = await submit_all(producer, jobs, metrics, low_priority=low_priority)
    response_id = "cmpl-" + jobs[0].id.removeprefix("job-")
    created = int(time.time())
    prompts = body.prompts()
    per_prompt = body.best_of or body.n  # choices generated for each prompt
    try:
        collected = Collected()
        async for position, event in merged(streams):
            if isinstance(event, Accepted):  # the job restarted on another worker
                collected.restart(range(position * per_prompt, (position + 1) * per_prompt))
            elif isinstance(event, Delta | Done):
                collected.add(position * per_prompt + event.index, event)
    finally:
        for s in streams:
            s.close()
    choices = []
    for position, prompt in enumerate(prompts):
        generated = [collected.choices.get(position * per_prompt + i, ChoiceText()) for i in range(per_prompt)]
        if per_prompt > body.n:  # best_of: the n likeliest answers, best first
            generated = sorted(generated, key=lambda c: c.cumulative_logprob, reverse=True)[: body.n]
        for i, choice in enumerate(generated):
            choices.append(_choice(body, streams[position], prompt, position * body.n + i, choice))
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": usage(prompt_tokens_of(streams), collected.completion_tokens),
    }


def _echo(prompt: str | list[int], events: JobEvents) -> str:
    """The prompt as text: as sent, or (token ids) as the worker's tokens spell it."""
    if isinstance(prompt, str):
        return prompt
    first = events.pending_first
    if isinstance(first, Accepted) and first.prompt_logprobs:
        return "".join(t.token for t in first.prompt_logprobs)
    return ""


def _logprobs_start(body: CompletionRequest, events: JobEvents) -> CompletionLogprobs:
    """The logprobs of a choice before its generated tokens: the prompt's own, when it is echoed."""
    first = events.pending_first
    logprobs = CompletionLogprobs()
    if body.echo and isinstance(first, Accepted) and first.prompt_logprobs:
        logprobs.add(first.prompt_logprobs)
    return logprobs


def _choice(
    body: CompletionRequest, events: JobEvents, prompt: str | list[int], index: int, choice: ChoiceText
) -> dict[str, Any]:
    text = "".join(choice.text)
    logprobs: dict[str, Any] | None = None
    if body.logprobs is not None:
        logprobs = _logprobs_start(body, events).add(choice.logprobs).as_openai()
    if body.echo:
        text = _echo(prompt, events) + text
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": choice.finish_reason}


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

    running: dict[int, CompletionLogprobs] = {}  # per choice index, so text offsets continue across chunks
    for position, (prompt, events) in enumerate(zip(prompts, streams, strict=True)):
        for i in range(body.n):
            index = position * body.n + i
            running[index] = _logprobs_start(body, events)
            if body.echo:
                echoed = running[index].take() if body.logprobs is not None else None
                yield chunk([{"index": index, "text": _echo(prompt, events), "logprobs": echoed,
                              "finish_reason": None}])  # fmt: skip
    completion_tokens = 0
    async for position, event in merged(streams):
        index = position * body.n + event.index if isinstance(event, Delta | Done) else 0
        if isinstance(event, Delta):
            if event.text or (body.logprobs is not None and event.token_ids):
                streams[position].committed = True
                logprobs = running[index].add(event.logprobs or []).take() if body.logprobs is not None else None
                yield chunk([{"index": index, "text": event.text, "logprobs": logprobs,
                              "finish_reason": None}])  # fmt: skip
        elif isinstance(event, Done):
            completion_tokens += event.usage.completion_tokens
            yield chunk([{"index": index, "text": "", "logprobs": None,
                          "finish_reason": event.finish_reason.value}])  # fmt: skip
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=usage(prompt_tokens_of(streams), completion_tokens))
