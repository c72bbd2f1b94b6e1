"""Chat completions, whole or as a chunk stream, from a validated :class:`ChatCompletionRequest`.

Function calling is settled here: a forced call's arguments are streamed as they are generated (its output is
parsed whole when not streamed); with ``auto`` a choice's text is held back while it may still turn out to be a
Hermes ``<tool_call>`` and returned as a call if it is one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from broker.producer import JobEvents, Producer
from broker.schemas import Delta, Done, Job, TokenLogprob
from serving.jobs import ChoiceText, JobObserver, collect, merged, prompt_tokens_of, submit_all
from serving.logprobs import chat_logprobs
from serving.requests import ChatCompletionRequest
from serving.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatDelta,
    ChatLogprobs,
    CompletionUsage,
)
from serving.streams import data_lines
from serving.tools import CallStream, ToolCall, forced_calls, may_become_call, parse_calls


def response_id_of(job: Job) -> str:
    return "chatcmpl-" + job.id.removeprefix("job-")  # the job id: findable in worker logs


async def chat_answer(
    producer: Producer,
    body: ChatCompletionRequest,
    observer: JobObserver | None = None,
    *,
    low_priority: bool = False,
    request_id: str | None = None,
) -> ChatCompletion:
    """A whole chat completion, as the non-streaming endpoint answers it (the Batch API runs its lines here too)."""
    job = body.to_job(producer.settings.request_timeout, request_id=request_id)
    streams = await submit_all(producer, [job], observer, low_priority=low_priority)
    created = int(time.time())
    collected = await collect(streams, body.n)
    return ChatCompletion(
        id=response_id_of(job),
        created=created,
        model=body.model,
        choices=[_choice(body, index, choice) for index, choice in sorted(collected.choices.items())],
        usage=CompletionUsage.of(
            prompt_tokens_of(streams), collected.completion_tokens, collected.cached_tokens(body.n)
        ),
    )


def _calls_in(body: ChatCompletionRequest, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a choice's whole text."""
    if body.forced_tools():
        calls = forced_calls(body.tool_choice, text)
        return (None, calls) if calls else (text, [])
    if body.tools_offered():
        content, calls = parse_calls(text)
        return (content or None, calls) if calls else (text, [])
    return text, []


def _logprobs(body: ChatCompletionRequest, entries: list[TokenLogprob] | None) -> ChatLogprobs | None:
    return chat_logprobs(entries or []) if body.logprobs else None


def _choice(body: ChatCompletionRequest, index: int, choice: ChoiceText) -> ChatChoice:
    content, calls = _calls_in(body, "".join(choice.text))
    if not calls and body.echoed():
        content = body.echoed() + (content or "")
    message = ChatCompletionMessage(content=content, tool_calls=[call.as_openai() for call in calls] or None)
    finish_reason = choice.finish_reason
    if calls:
        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return ChatChoice(index=index, message=message, logprobs=_logprobs(body, choice.logprobs),
                      finish_reason=finish_reason, stop_reason=choice.stop_reason)  # fmt: skip


@dataclass
class _Held:
    """Output of one choice kept back while it may still turn out to be a tool call."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    plain: bool = False  # shown to be ordinary text: passed through from then on
    forced: CallStream | None = None  # a forced call's output, read as it comes

    def take_logprobs(self) -> list[TokenLogprob]:
        """The logprobs of the tokens not yet sent, for the chunk about to be sent."""
        taken, self.logprobs = self.logprobs, []
        return taken


@dataclass
class ChatStream:
    """A streaming chat request whose job is queued and has sent its first event: its chunks, to be relayed."""

    body: ChatCompletionRequest
    streams: list[JobEvents]
    response_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    generated: int = 0  # tokens generated so far, over all choices (for continuous_usage_stats)

    def lines(self) -> AsyncIterator[str]:
        """What each SSE ``data:`` line holds, ``[DONE]`` last; the job is closed however the stream ends."""
        return data_lines(self.streams, self.chunks())

    def _chunk(
        self,
        index: int,
        delta: ChatDelta,
        logprobs: ChatLogprobs | None = None,
        finish_reason: str | None = None,
        stop_reason: str | int | None = None,
    ) -> ChatCompletionChunk:
        choice = ChatChunkChoice(
            index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason, stop_reason=stop_reason
        )
        return ChatCompletionChunk(id=self.response_id, created=self.created, model=self.body.model, choices=[choice])

    def _content(self, index: int, text: str, logprobs: list[TokenLogprob] | None) -> ChatCompletionChunk:
        return self._chunk(index, ChatDelta(content=text), _logprobs(self.body, logprobs))

    def _held(self) -> _Held:
        body = self.body
        if body.forced_tools():
            return _Held(forced=CallStream(body.tool_choice))
        return _Held(plain=not body.tools_offered())

    async def chunks(self) -> AsyncIterator[ChatCompletionChunk]:
        """The stream's chunks; with ``continuous_usage_stats`` each carries the usage so far (vLLM's)."""
        options = self.body.stream_options
        continuous = options is not None and options.continuous_usage_stats
        async for chunk in self._chunks():
            if continuous and chunk.usage is None:
                chunk.usage = CompletionUsage.of(prompt_tokens_of(self.streams), self.generated)
            yield chunk

    async def _chunks(self) -> AsyncIterator[ChatCompletionChunk]:
        body, streams = self.body, self.streams
        held: dict[int, _Held] = {}
        completion_tokens = 0
        cached_tokens: int | None = None
        for index in range(body.n):
            yield self._chunk(index, ChatDelta(role="assistant", content=""))
            if body.echoed():
                yield self._chunk(index, ChatDelta(content=body.echoed()))
        async for position, event in merged(streams):
            if isinstance(event, Delta):
                self.generated += len(event.token_ids)
                # With logprobs every token is reported, also one whose text is still held back (a partial
                # character, a possible stop string).
                if not (event.text or (body.logprobs and event.token_ids)):
                    continue
                streams[position].committed = True  # from here on, a restart elsewhere would repeat output
                kept = held.get(event.index) or held.setdefault(event.index, self._held())
                if kept.plain:
                    yield self._content(event.index, event.text, event.logprobs)
                    continue
                kept.logprobs += event.logprobs or []
                if kept.forced is not None:
                    for piece in kept.forced.feed(event.text):
                        delta = ChatDelta(tool_calls=[piece])
                        yield self._chunk(event.index, delta, _logprobs(body, kept.take_logprobs()))
                    continue
                kept.text += event.text
                if may_become_call(kept.text):
                    continue  # a call is sent whole, once the choice is done
                yield self._content(event.index, kept.text, kept.logprobs)
                held[event.index] = _Held(plain=True)
            elif isinstance(event, Done):
                completion_tokens += event.usage.completion_tokens
                if event.usage.cached_tokens is not None:
                    cached_tokens = event.usage.cached_tokens
                finish_reason = event.finish_reason.value
                kept = held.pop(event.index) if event.index in held else self._held()
                if kept.forced is not None:
                    pieces, text = kept.forced.finish()
                    for piece in pieces:
                        yield self._chunk(
                            event.index, ChatDelta(tool_calls=[piece]), _logprobs(body, kept.take_logprobs())
                        )
                    if text:
                        yield self._content(event.index, text, kept.take_logprobs())
                    if kept.forced.called:
                        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
                elif kept.text:
                    text, calls = _calls_in(body, kept.text)
                    if calls:
                        delta = ChatDelta(tool_calls=[c.as_openai(i) for i, c in enumerate(calls)])
                        yield self._chunk(event.index, delta, _logprobs(body, kept.logprobs))
                        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
                    elif text:
                        yield self._content(event.index, text, kept.logprobs)
                # a forced call's tokens held back to the end (whitespace, a closing brace) report their logprobs last
                rest = _logprobs(body, kept.take_logprobs()) if kept.forced is not None and kept.logprobs else None
                yield self._chunk(event.index, ChatDelta(), rest, finish_reason, event.stop_reason)
        if body.stream_options and body.stream_options.include_usage:
            usage = CompletionUsage.of(prompt_tokens_of(streams), completion_tokens, cached_tokens)
            yield ChatCompletionChunk(
                id=self.response_id, created=self.created, model=body.model, choices=[], usage=usage
            )


async def open_chat_stream(
    producer: Producer,
    body: ChatCompletionRequest,
    observer: JobObserver | None = None,
    *,
    request_id: str | None = None,
    resume: dict[str, Any] | None = None,
    created: int | None = None,
) -> ChatStream:
    """Queue the request's job and wait for its first event (so an error before any token is a proper 4xx).
    ``resume`` goes into the job's event log, for a client that resumes the stream elsewhere."""
    job = body.to_job(producer.settings.request_timeout, request_id=request_id)
    streams = await submit_all(producer, [job], observer, resume=resume)
    return ChatStream(body, streams, response_id_of(job), created or int(time.time()))
