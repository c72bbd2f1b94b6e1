"""Chat stream chunks -> the Responses stream events, in their order (``response.created``, the output items'
added/delta/done events, ``response.completed`` or ``response.failed``). Pure: nothing here knows FastAPI or Redis;
the response objects and items it fills are :mod:`api.responses.translate`'s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from api.responses.translate import (
    Event,
    call_item,
    failed,
    finish,
    message_item,
    new_id,
    reasoning_item,
    usage_of,
)
from broker.errors import QueuechatError


@dataclass
class StreamTranslator:
    """Turns the chat stream's chunks (dicts) into the Responses stream events, each with its
    ``sequence_number``: ``response.created`` (and ``response.queued`` in the background),
    ``response.in_progress``; per output item
    ``response.output_item.added``, for reasoning ``response.content_part.added``, its
    ``response.reasoning_text.delta`` events, ``response.reasoning_text.done`` and ``response.content_part.done``,
    for a message ``response.content_part.added``, its
    ``response.output_text.delta`` events, ``response.output_text.done`` and ``response.content_part.done``, for a
    function call ``response.function_call_arguments.delta`` and ``.done``, then ``response.output_item.done``;
    last ``response.completed`` (``response.incomplete`` when cut by max_output_tokens, ``response.failed`` when
    the job failed)."""

    response: dict[str, Any]  # the response object as created (status in_progress, no output)
    _sequence: int = 0
    _reasoning: dict[str, Any] | None = None  # the reasoning item being streamed
    _reasoning_text: list[str] = field(default_factory=list)
    _message: dict[str, Any] | None = None  # the message item being streamed
    _text: list[str] = field(default_factory=list)
    _finish_reason: str | None = None
    _call: dict[str, Any] | None = None  # the function call item being streamed
    _arguments: list[str] = field(default_factory=list)
    _input_tokens: int = 0
    _output_tokens: int = 0

    def _event(self, kind: str, **data: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return event

    @property
    def output(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.response["output"]
        return out

    def start(self) -> Iterator[Event]:
        yield self._event("response.created", response=_copy(self.response))  # in_progress, or queued
        if self.response["status"] == "queued":  # a background response
            yield self._event("response.queued", response=_copy(self.response))
        self.response["status"] = "in_progress"
        yield self._event("response.in_progress", response=_copy(self.response))

    def chunk(self, chunk: dict[str, Any]) -> Iterator[Event]:
        if chunk.get("usage"):
            self._input_tokens = chunk["usage"]["prompt_tokens"]
            self._output_tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                yield from self._close_message()
                yield from self._close_call()
                yield from self._reasoning_delta(delta["reasoning_content"])
            if delta.get("content"):
                yield from self._close_reasoning()
                yield from self._close_call()
                yield from self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or []:
                yield from self._close_reasoning()
                yield from self._close_message()
                yield from self._call_piece(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def _reasoning_delta(self, text: str) -> Iterator[Event]:
        if self._reasoning is None:
            self._reasoning = reasoning_item(new_id("rs"), "", "in_progress")
            self._reasoning["content"] = []
            self.output.append(self._reasoning)
            index = len(self.output) - 1
            yield self._event("response.output_item.added", output_index=index, item=_copy(self._reasoning))
            yield self._event(
                "response.content_part.added",
                item_id=self._reasoning["id"],
                output_index=index,
                content_index=0,
                part={"type": "reasoning_text", "text": ""},
            )
        self._reasoning_text.append(text)
        yield self._event(
            "response.reasoning_text.delta",
            item_id=self._reasoning["id"],
            output_index=self.output.index(self._reasoning),
            content_index=0,
            delta=text,
        )

    def _close_reasoning(self) -> Iterator[Event]:
        item = self._reasoning
        if item is None:
            return
        index, text = self.output.index(item), "".join(self._reasoning_text)
        part = {"type": "reasoning_text", "text": text}
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        yield self._event("response.reasoning_text.done", **common, text=text)
        yield self._event("response.content_part.done", **common, part=part)
        item["content"] = [part]
        item["status"] = "incomplete" if self._finish_reason == "length" and item is self.output[-1] else "completed"
        yield self._event("response.output_item.done", output_index=index, item=_copy(item))
        self._reasoning, self._reasoning_text = None, []

    def _text_delta(self, text: str) -> Iterator[Event]:
        if self._message is None:
            self._message = message_item(new_id("msg"), "", "in_progress")
            self._message["content"] = []
            self.output.append(self._message)
            yield self._event(
                "response.output_item.added", output_index=len(self.output) - 1, item=_copy(self._message)
            )
            yield self._event(
                "response.content_part.added",
                item_id=self._message["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
        self._text.append(text)
        yield self._event(
            "response.output_text.delta",
            item_id=self._message["id"],
            output_index=len(self.output) - 1,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close_message(self) -> Iterator[Event]:
        message = self._message
        if message is None:
            return
        index = self.output.index(message)
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        common = {"item_id": message["id"], "output_index": index, "content_index": 0}
        yield self._event("response.output_text.done", **common, text=text, logprobs=[])
        yield self._event("response.content_part.done", **common, part=part)
        message["content"] = [part]
        message["status"] = "incomplete" if self._finish_reason == "length" else "completed"
        yield self._event("response.output_item.done", output_index=index, item=_copy(message))
        self._message = None
        self._text = []

    def _call_piece(self, call: dict[str, Any]) -> Iterator[Event]:
        """A call's first piece (its id and name) opens its item; every piece's arguments are a delta."""
        if call.get("id"):
            yield from self._close_call()
            self._call = call_item({**call, "function": {**call["function"], "arguments": ""}}, "in_progress")
            self.output.append(self._call)
            yield self._event("response.output_item.added", output_index=len(self.output) - 1, item=_copy(self._call))
        arguments = call["function"].get("arguments") or ""
        if self._call is not None and arguments:
            self._arguments.append(arguments)
            yield self._event(
                "response.function_call_arguments.delta",
                item_id=self._call["id"],
                output_index=self.output.index(self._call),
                delta=arguments,
            )

    def _close_call(self) -> Iterator[Event]:
        item = self._call
        if item is None:
            return
        index, arguments = self.output.index(item), "".join(self._arguments)
        yield self._event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            name=item["name"],
            arguments=arguments,
        )
        item.update(arguments=arguments, status="incomplete" if self._finish_reason == "length" else "completed")
        yield self._event("response.output_item.done", output_index=index, item=_copy(item))
        self._call, self._arguments = None, []

    def finish(self) -> Iterator[Event]:
        if not self.output:  # an empty answer is still a message, as the non-streaming answer has it
            yield from self._text_delta("")
        yield from self._close_reasoning()
        yield from self._close_message()
        yield from self._close_call()
        self.response["usage"] = usage_of(self._input_tokens, self._output_tokens)
        finish(self.response, self._finish_reason)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=_copy(self.response))

    def fail(self, exc: QueuechatError) -> Iterator[Event]:
        """The job failed midway: the items streamed so far, and ``response.failed``."""
        yield from self._close_reasoning()
        yield from self._close_message()
        failed(self.response, exc)
        yield self._event("response.failed", response=_copy(self.response))


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    return copied


async def translated_stream(
    chunks: AsyncIterator[dict[str, Any]], translator: StreamTranslator, *, started: bool = False
) -> AsyncIterator[Event]:
    """The chat stream's chunks as the Responses events (from ``response.created``, unless ``started``); a job
    that fails midway ends with ``response.failed``."""
    if not started:
        for event in translator.start():
            yield event
    try:
        async for chunk in chunks:
            for event in translator.chunk(chunk):
                yield event
    except QueuechatError as exc:
        for event in translator.fail(exc):
            yield event
        return
    for event in translator.finish():
        yield event
