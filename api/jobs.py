"""From OpenAI requests to broker jobs, and from job events back to OpenAI response objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.messages import reject_media
from api.metrics import ApiMetrics, observe
from api.schemas import ChatCompletionRequest, CompletionRequest
from api.tools import forced_call_schema
from broker.producer import AnyEvent, JobEvents, Producer
from broker.schemas import Delta, Done, Job, JobKind, SamplingParams, TokenLogprob


def sampling_params(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    common: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k_or_none(),
        "stop": body.stop or [],  # normalised to a list by the validator
        "stop_token_ids": body.stop_token_ids or [],
        "seed": body.seed,
        "n": body.n,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
    }
    if isinstance(body, ChatCompletionRequest):
        schema = forced_call_schema(body) or (body.response_format.output_schema() if body.response_format else None)
        return SamplingParams(
            max_tokens=body.max_new_tokens(),
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs or 0,
            json_schema=schema,
            **common,
        )
    # best_of: generate that many, answer with the n of highest cumulative logprob (so logprobs are needed)
    return SamplingParams(
        max_tokens=body.max_tokens,
        logprobs=body.logprobs is not None or (body.best_of or body.n) > body.n,
        top_logprobs=body.logprobs or 0,
        prompt_logprobs=body.echo and body.logprobs is not None,
        **{**common, "n": body.best_of or body.n},
    )


def chat_job(body: ChatCompletionRequest, timeout: float) -> Job:
    reject_media(body.messages)
    return Job(
        kind=JobKind.CHAT,
        model=body.model,
        messages=[m.as_template_message() for m in body.messages],
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools_offered() and body.tools else None,
        params=sampling_params(body),
        deadline=time.time() + timeout,
    )


def completion_jobs(body: CompletionRequest, timeout: float) -> list[Job]:
    params = sampling_params(body)
    deadline = time.time() + timeout
    return [
        Job(kind=JobKind.COMPLETION, model=body.model, prompt=p, params=params, deadline=deadline)
        for p in body.prompts()
    ]


async def submit_all(
    producer: Producer,
    jobs: Sequence[Job],
    metrics: ApiMetrics | None = None,
    *,
    low_priority: bool = False,
    resume: dict[str, Any] | None = None,
) -> list[JobEvents]:
    """Submit every job and wait for each first event, so an error before the first token becomes a proper
    4xx. On any failure the jobs already submitted are closed (their workers then cancel them)."""
    submitted: list[JobEvents] = []
    try:
        for job in jobs:
            arrived = time.monotonic()
            submitted.append(await producer.submit(job, low_priority=low_priority, resume=resume))
            if metrics is not None:
                metrics.track(submitted[-1], arrived)
        firsts = await asyncio.gather(*(e.next_event() for e in submitted))
    except BaseException:
        for events in submitted:
            events.close()
        raise
    for events, first in zip(submitted, firsts, strict=True):
        events.pending_first = first
        observe(events, first)
    return submitted


async def merged(streams: Sequence[JobEvents]) -> AsyncIterator[tuple[int, AnyEvent]]:
    """Events of several jobs as (job position, event), in arrival order."""
    if len(streams) == 1:
        async for event in streams[0]:
            observe(streams[0], event)
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, AnyEvent | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, events: JobEvents) -> None:
        try:
            async for event in events:
                observe(events, event)
                await queue.put((position, event))
            await queue.put((position, None))
        except BaseException as exc:
            await queue.put((position, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            position, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class ChoiceText:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.logprob or 0.0 for t in self.logprobs)


@dataclass
class Collected:
    """A whole answer gathered from events, for non-streaming responses."""

    choices: dict[int, ChoiceText] = field(default_factory=dict)
    prompt_tokens: int = 0

    def add(self, index: int, event: AnyEvent) -> None:
        choice = self.choices.setdefault(index, ChoiceText())
        if isinstance(event, Delta):
            choice.text.append(event.text)
            choice.token_ids += event.token_ids
            if event.logprobs:
                choice.logprobs += event.logprobs
        elif isinstance(event, Done):
            choice.finish_reason = event.finish_reason.value
            choice.completion_tokens = event.usage.completion_tokens

    def restart(self, indices: range) -> None:
        """Forget what these choices gathered: their job is being run again by another worker."""
        for index in indices:
            self.choices.pop(index, None)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices.values())
