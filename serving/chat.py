"""Chat completions, whole or as a chunk stream, from a validated :class:`ChatCompletionRequest`.

A choice's output is read here with the parsers the worker named in its ``accepted`` event (see
:mod:`serving.parsers`): a reasoning model's reasoning apart from its answer, and in the answer the tool calls in
the model's format. A forced call's arguments are streamed as they are generated (its output is parsed whole when
not streamed); with ``auto``, text that may still become a call is held back, and a call is streamed as OpenAI
streams one: its id and name first, then fragments of its arguments.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from broker.jobevents import JobEvents
from broker.producer import Producer
from broker.schemas import Accepted, Delta, Done, Job, TokenLogprob
from serving.jobs import ChoiceText, JobObserver, collect, merged, prompt_tokens_of, submit_all
from serving.logprobs import chat_logprobs
from serving.parsers import CallParser, ReasoningSplitter, call_parser
from serving.parsers.calls import CallArguments, CallBegin, Piece, read_whole
from serving.requests import ChatCompletionRequest
from serving.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatDelta,
    ChatDeltaToolCall,
    ChatLogprobs,
    CompletionUsage,
    DeltaFunction,
)
from serving.streams import data_lines
from serving.tools import CallStream, ToolCall, forced_calls


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
        choices=[
            _choice(body, collected.accepted, index, choice) for index, choice in sorted(collected.choices.items())
        ],
        usage=CompletionUsage.of(
            prompt_tokens_of(streams), collected.completion_tokens, collected.cached_tokens(body.n)
        ),
    )


def reasoning_splitter(body: ChatCompletionRequest, accepted: Accepted | None) -> ReasoningSplitter | None:
    """The reader of a choice's reasoning, if the worker's model writes it. Output under a grammar (a forced call, a
    response_format schema) follows it from its first token, so it holds no reasoning."""
    constrained = body.forced_tools() or (body.response_format and body.response_format.output_schema())
    if accepted is None or accepted.reasoning_parser is None or constrained:
        return None
    return ReasoningSplitter(accepted.reasoning_parser, opened=accepted.reasoning_open)


def _call_parser(body: ChatCompletionRequest, accepted: Accepted | None) -> CallParser:
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    return call_parser(accepted.tool_call_parser if accepted else None, tools)


def _calls_in(body: ChatCompletionRequest, accepted: Accepted | None, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a choice's whole answer."""
    if body.forced_tools():
        calls = forced_calls(body.tool_choice, text)
        return (None, calls) if calls else (text, [])
    if body.tools_offered():
        content, found = read_whole(_call_parser(body, accepted), text)
        calls = [ToolCall(f.name, f.arguments) for f in found]
        return (content.strip() or None, calls) if calls else (text, [])
    return text, []


def _logprobs(body: ChatCompletionRequest, entries: list[TokenLogprob] | None) -> ChatLogprobs | None:
    return chat_logprobs(entries or []) if body.logprobs else None


def _choice(body: ChatCompletionRequest, accepted: Accepted | None, index: int, choice: ChoiceText) -> ChatChoice:
    text, reasoning = "".join(choice.text), None
    splitter = reasoning_splitter(body, accepted)
    if splitter is not None:
        reasoning, text = splitter.whole(text)
    content, calls = _calls_in(body, accepted, text)
    if reasoning is not None and not content:
        content = None  # all reasoning, no answer (cut short while thinking)
    if not calls and body.echoed():
        content = body.echoed() + (content or "")
    message = ChatCompletionMessage(
        content=content,
        reasoning_content=reasoning,
        reasoning=reasoning,
        tool_calls=[call.as_openai() for call in calls] or None,
    )
    finish_reason = choice.finish_reason
    if calls:
        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return ChatChoice(index=index, message=message, logprobs=_logprobs(body, choice.logprobs),
                      finish_reason=finish_reason, stop_reason=choice.stop_reason)  # fmt: skip


@dataclass
class _Reading:
    """How one streamed choice's output is being read: its reasoning apart, its calls (forced or in the model's
    format) out of its answer; the logprobs of tokens whose text is not sent yet. None of them: plain text."""

    reasoning: ReasoningSplitter | None = None
    forced: CallStream | None = None  # a forced call's output, read as it comes
    calls: CallParser | None = None  # tools offered with "auto"
    call_ids: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def plain(self) -> bool:
        return self.reasoning is None and self.forced is None and self.calls is None

    @property
    def called(self) -> bool:
        return (self.forced is not None and self.forced.called) or bool(self.call_ids)

    def take_logprobs(self) -> list[TokenLogprob]:
        """The logprobs of the tokens not yet sent, for the chunk about to be sent."""
        taken, self.logprobs = self.logprobs, []
        return taken

    def _call_delta(self, piece: Piece) -> ChatDelta:
        if isinstance(piece, str):
            return ChatDelta(content=piece)
        if isinstance(piece, CallBegin):
            self.call_ids.append(ToolCall(piece.name, "").id)
            function = DeltaFunction(name=piece.name, arguments="")
            call = ChatDeltaToolCall(index=piece.index, id=self.call_ids[-1], type="function", function=function)
        else:
            assert isinstance(piece, CallArguments)
            call = ChatDeltaToolCall(index=piece.index, function=DeltaFunction(arguments=piece.fragment))
        return ChatDelta(tool_calls=[call])

    def _answer(self, text: str, *, final: bool = False) -> list[ChatDelta]:
        if self.forced is not None:
            if not final:
                return [ChatDelta(tool_calls=[p]) for p in self.forced.feed(text)]
            pieces, content = self.forced.finish()
            return [ChatDelta(tool_calls=[p]) for p in pieces] + ([ChatDelta(content=content)] if content else [])
        if self.calls is not None:
            parsed = self.calls.feed(text) + (self.calls.finish() if final else [])
            return [self._call_delta(p) for p in parsed]
        return [ChatDelta(content=text)] if text else []

    def deltas(self, text: str, *, final: bool = False) -> list[ChatDelta]:
        """What ``text`` (and with ``final``, the end of the output) makes ready to send."""
        if self.reasoning is None:
            return self._answer(text, final=final)
        splits = self.reasoning.feed(text) + (self.reasoning.finish() if final else [])
        out: list[ChatDelta] = []
        for split in splits:
            out += [ChatDelta(reasoning_content=split.text, reasoning=split.text)] if split.reasoning else []
            out += self._answer(split.text) if not split.reasoning else []
        return out + (self._answer("", final=True) if final else [])


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

    def _reading(self, accepted: Accepted | None) -> _Reading:
        body = self.body
        reasoning = reasoning_splitter(body, accepted)
        if body.forced_tools():
            return _Reading(reasoning, forced=CallStream(body.tool_choice))
        return _Reading(reasoning, calls=_call_parser(body, accepted) if body.tools_offered() else None)

    def _sent(self, index: int, kept: _Reading, deltas: list[ChatDelta]) -> list[ChatCompletionChunk]:
        """The chunks of ``deltas``; the logprobs of the tokens read so far go with the first."""
        return [self._chunk(index, d, _logprobs(self.body, kept.take_logprobs())) for d in deltas]

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
        first = streams[0].pending_first
        accepted = first if isinstance(first, Accepted) else None
        readings: dict[int, _Reading] = {}
        completion_tokens = 0
        cached_tokens: int | None = None
        for index in range(body.n):
            yield self._chunk(index, ChatDelta(role="assistant", content=""))
            if body.echoed():
                yield self._chunk(index, ChatDelta(content=body.echoed()))
        async for position, event in merged(streams):
            if isinstance(event, Accepted):
                accepted = event  # restarted on another worker: choices not begun are read as its model writes
            elif isinstance(event, Delta):
                self.generated += len(event.token_ids)
                # With logprobs every token is reported, also one whose text is still held back (a partial
                # character, a possible stop string).
                if not (event.text or (body.logprobs and event.token_ids)):
                    continue
                streams[position].committed = True  # from here on, a restart elsewhere would repeat output
                kept = readings.get(event.index) or readings.setdefault(event.index, self._reading(accepted))
                if kept.plain:
                    yield self._content(event.index, event.text, event.logprobs)
                    continue
                kept.logprobs += event.logprobs or []
                for chunk in self._sent(event.index, kept, kept.deltas(event.text)):
                    yield chunk
            elif isinstance(event, Done):
                completion_tokens += event.usage.completion_tokens
                if event.usage.cached_tokens is not None:
                    cached_tokens = event.usage.cached_tokens
                finish_reason = event.finish_reason.value
                kept = readings.pop(event.index) if event.index in readings else self._reading(accepted)
                for chunk in self._sent(event.index, kept, kept.deltas("", final=True)):
                    yield chunk
                if kept.called:
                    finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
                # tokens whose text was held back to the end (whitespace, a closing brace) report their logprobs last
                rest = _logprobs(body, kept.take_logprobs()) if kept.logprobs else None
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
