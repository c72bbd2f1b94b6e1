"""Text completions, whole or as a chunk stream, from a validated :class:`CompletionRequest`: one job per prompt,
echo, logprobs, best_of."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from broker.jobevents import JobEvents
from broker.producer import Producer
from broker.schemas import Accepted, Delta, Done, Job
from serving import responses
from serving.jobs import ChoiceText, JobObserver, collect, merged, prompt_tokens_of, submit_all
from serving.logprobs import CompletionLogprobs
from serving.requests import CompletionRequest
from serving.responses import Completion, CompletionChoice, CompletionUsage
from serving.streams import data_lines


def response_id_of(jobs: list[Job]) -> str:
    return "cmpl-" + jobs[0].id.removeprefix("job-")


async def completion_answer(
    producer: Producer,
    body: CompletionRequest,
    observer: JobObserver | None = None,
    *,
    low_priority: bool = False,
    request_id: str | None = None,
) -> Completion:
    """A whole completion, as the non-streaming endpoint answers it (the Batch API runs its lines here too)."""
    jobs = body.to_jobs(producer.settings.request_timeout, request_id=request_id)
    streams = await submit_all(producer, jobs, observer, low_priority=low_priority)
    created = int(time.time())
    per_prompt = body.per_prompt
    collected = await collect(streams, per_prompt)
    choices = []
    for position, prompt in enumerate(body.prompts()):
        generated = [collected.choices.get(position * per_prompt + i, ChoiceText()) for i in range(per_prompt)]
        if per_prompt > body.n:  # best_of: the n likeliest answers, best first
            generated = sorted(generated, key=lambda c: c.cumulative_logprob, reverse=True)[: body.n]
        for i, choice in enumerate(generated):
            choices.append(_choice(body, streams[position], prompt, position * body.n + i, choice))
    return Completion(
        id=response_id_of(jobs),
        created=created,
        model=body.model,
        choices=choices,
        usage=CompletionUsage.of(
            prompt_tokens_of(streams), collected.completion_tokens, collected.cached_tokens(per_prompt)
        ),
    )


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
) -> CompletionChoice:
    text = "".join(choice.text)
    logprobs: responses.CompletionLogprobs | None = None
    if body.logprobs is not None:
        logprobs = _logprobs_start(body, events).add(choice.logprobs).as_openai()
    if body.echo:
        text = _echo(prompt, events) + text
    return CompletionChoice(
        index=index, text=text, logprobs=logprobs, finish_reason=choice.finish_reason, stop_reason=choice.stop_reason
    )


@dataclass
class CompletionStream:
    """A streaming completion whose jobs are queued and have sent their first events: its chunks, to be relayed."""

    body: CompletionRequest
    streams: list[JobEvents]
    response_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    generated: int = 0  # tokens generated so far, over all choices (for continuous_usage_stats)

    def lines(self) -> AsyncIterator[str]:
        """What each SSE ``data:`` line holds, ``[DONE]`` last; the jobs are closed however the stream ends."""
        return data_lines(self.streams, self.chunks())

    def _chunk(
        self,
        index: int,
        text: str,
        logprobs: responses.CompletionLogprobs | None = None,
        finish_reason: str | None = None,
        stop_reason: str | int | None = None,
    ) -> Completion:
        choice = CompletionChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=finish_reason, stop_reason=stop_reason
        )
        return Completion(id=self.response_id, created=self.created, model=self.body.model, choices=[choice])

    async def chunks(self) -> AsyncIterator[Completion]:
        """The stream's chunks; with ``continuous_usage_stats`` each carries the usage so far (vLLM's)."""
        options = self.body.stream_options
        continuous = options is not None and options.continuous_usage_stats
        async for chunk in self._chunks():
            if continuous and chunk.usage is None:
                chunk.usage = CompletionUsage.of(prompt_tokens_of(self.streams), self.generated)
            yield chunk

    async def _chunks(self) -> AsyncIterator[Completion]:
        body, streams = self.body, self.streams
        running: dict[int, CompletionLogprobs] = {}  # per choice index, so text offsets continue across chunks
        for position, (prompt, events) in enumerate(zip(body.prompts(), streams, strict=True)):
            for i in range(body.n):
                index = position * body.n + i
                running[index] = _logprobs_start(body, events)
                if body.echo:
                    echoed = running[index].take() if body.logprobs is not None else None
                    yield self._chunk(index, _echo(prompt, events), echoed)
        completion_tokens = 0
        cached: dict[int, int | None] = {}  # per job: the prompt tokens its engine found cached
        async for position, event in merged(streams):
            index = position * body.n + event.index if isinstance(event, Delta | Done) else 0
            if isinstance(event, Delta):
                self.generated += len(event.token_ids)
                if event.text or (body.logprobs is not None and event.token_ids):
                    streams[position].committed = True
                    logprobs = running[index].add(event.logprobs or []).take() if body.logprobs is not None else None
                    yield self._chunk(index, event.text, logprobs)
            elif isinstance(event, Done):
                completion_tokens += event.usage.completion_tokens
                cached[position] = event.usage.cached_tokens
                yield self._chunk(index, "", finish_reason=event.finish_reason.value, stop_reason=event.stop_reason)
        if body.stream_options and body.stream_options.include_usage:
            known = [c for c in cached.values() if c is not None]
            usage = CompletionUsage.of(prompt_tokens_of(streams), completion_tokens, sum(known) if known else None)
            yield Completion(id=self.response_id, created=self.created, model=body.model, choices=[], usage=usage)


async def open_completion_stream(
    producer: Producer,
    body: CompletionRequest,
    observer: JobObserver | None = None,
    *,
    request_id: str | None = None,
    resume: dict[str, Any] | None = None,
    created: int | None = None,
) -> CompletionStream:
    """Queue one job per prompt and wait for each first event (errors before any token are proper 4xx).
    ``resume`` goes into the jobs' event logs, for a client that resumes the stream elsewhere."""
    jobs = body.to_jobs(producer.settings.request_timeout, request_id=request_id)
    streams = await submit_all(producer, jobs, observer, resume=resume)
    return CompletionStream(body, streams, response_id_of(jobs), created or int(time.time()))
