"""Anthropic Messages <-> OpenAI chat completions: requests one way, answers and stream chunks the other.

Pure functions over pydantic models and dicts: nothing here knows FastAPI or Redis. A Messages request becomes a
:class:`ChatCompletionRequest` (so it passes the same validation and runs as the same job); the chat answer, or
the chat stream's chunks, become a Message or Anthropic's stream events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from api.anthropic.schemas import ContentBlock, CountTokensRequest, Message, MessagesRequest
from serving.requests import ChatCompletionRequest

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def message_id(response_id: str) -> str:
    """``msg_`` and the job's id, so the worker's log line can be found from the answer."""
    return "msg_" + response_id.removeprefix("chatcmpl-")


def _chat_messages(body: CountTokensRequest | MessagesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = body.system_text()
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.messages:
        messages += _from_message(message)
    return messages


def _from_message(message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "assistant":
        text = "".join(b.text or "" for b in message.content if b.type == "text")
        calls = [_tool_call(b) for b in message.content if b.type == "tool_use"]
        out: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    # A user turn: its tool results first (each an OpenAI tool message, as chat templates expect them right after
    # the assistant's calls), then its text.
    converted = [
        {"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_content(b)}
        for b in message.content
        if b.type == "tool_result"
    ]
    text = "".join(b.text or "" for b in message.content if b.type == "text")
    if text or not converted:
        converted.append({"role": "user", "content": text})
    return converted


def _result_content(block: ContentBlock) -> str:
    text = block.result_text()
    return f"Error: {text}" if block.is_error else text


def _tool_call(block: ContentBlock) -> dict[str, Any]:
    arguments = json.dumps(block.input or {}, ensure_ascii=False, separators=(",", ":"))
    return {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}


def _tools(body: CountTokensRequest | MessagesRequest) -> dict[str, Any]:
    if not body.tools:
        return {}
    out: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
            }
            for t in body.tools
        ]
    }
    choice = body.tool_choice
    if choice is not None:
        out["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "none": "none",
            "tool": {"type": "function", "function": {"name": choice.name}},
        }[choice.type]
        if choice.disable_parallel_tool_use is not None:
            out["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return out


def to_chat_request(body: MessagesRequest) -> ChatCompletionRequest:
    """The chat completion request that asks the model for what ``body`` asks."""
    request: dict[str, Any] = {
        "model": body.model,
        "messages": _chat_messages(body),
        "max_tokens": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k or None,  # Anthropic's 0 is "off" too
        "stop": body.stop_sequences,
        "stream": body.stream,
        **_tools(body),
    }
    output_format = body.output_config.format if body.output_config else None
    if output_format is not None:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output_format.schema_},
        }
    if body.stream:
        request["stream_options"] = {"include_usage": True}  # message_delta carries the output token count
    if body.metadata and body.metadata.user_id:
        request["user"] = body.metadata.user_id
    return ChatCompletionRequest.model_validate(request)


def count_request(body: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request whose prompt count_tokens counts (with its tools, which the chat template renders)."""
    return ChatCompletionRequest.model_validate({"model": body.model, "messages": _chat_messages(body), **_tools(body)})


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    try:
        arguments = json.loads(function["arguments"] or "{}")
    except json.JSONDecodeError:
        arguments = {}
    return {
        "type": "tool_use",
        "id": call["id"],
        "name": function["name"],
        "input": arguments if isinstance(arguments, dict) else {},
    }


def to_message(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (as the non-streaming endpoint answers) as an Anthropic Message."""
    choice = completion["choices"][0]
    message = choice["message"]
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):  # no signature: the reasoning is the model's own text, not Claude's
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    content += [_tool_use(call) for call in message.get("tool_calls") or []]
    usage = completion["usage"]
    return {
        "id": message_id(completion["id"]),
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": STOP_REASONS.get(choice["finish_reason"], "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
    }


@dataclass
class StreamTranslator:
    """Turns the chat stream's chunks (dicts) into Anthropic's events: ``message_start``, then for each content
    block (a reasoning model's ``thinking`` first) ``content_block_start``, its deltas and ``content_block_stop``,
    then ``message_delta`` (stop reason, output tokens) and ``message_stop``. Events are (name, data) pairs."""

    model: str
    input_tokens: int
    _open: str | None = None  # the type of the content block being streamed
    _blocks: int = 0
    _stop_reason: str | None = None
    _output_tokens: int = 0

    def start(self, response_id: str) -> tuple[str, dict[str, Any]]:
        message: dict[str, Any] = {
            "id": message_id(response_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return "message_start", {"type": "message_start", "message": message}

    def chunk(self, chunk: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        if chunk.get("usage"):
            self._output_tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._open != "thinking":
                    yield from self._close()
                    yield from self._begin({"type": "thinking", "thinking": "", "signature": ""})
                    self._open = "thinking"
                yield self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            if delta.get("content"):
                if self._open != "text":
                    yield from self._close()
                    yield from self._begin({"type": "text", "text": ""})
                    self._open = "text"
                yield self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if call.get("id"):  # a call's first piece; the next pieces of a streamed call carry arguments only
                    yield from self._close()
                    yield from self._begin(
                        {"type": "tool_use", "id": call["id"], "name": function["name"], "input": {}}
                    )
                    self._open = "tool_use"
                if function.get("arguments"):
                    yield self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
            if choice.get("finish_reason"):
                self._stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")

    def finish(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._close()
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": self._output_tokens},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    def _begin(self, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "content_block_start", {"type": "content_block_start", "index": self._blocks, "content_block": block}

    def _delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": self._blocks, "delta": delta}

    def _close(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self._open is not None:
            yield "content_block_stop", {"type": "content_block_stop", "index": self._blocks}
            self._blocks += 1
            self._open = None


async def translated_stream(
    chunks: AsyncIterator[dict[str, Any]], translator: StreamTranslator, response_id: str
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The chat stream's chunks as Anthropic's events, message_start first and message_stop last."""
    yield translator.start(response_id)
    async for chunk in chunks:
        for event in translator.chunk(chunk):
            yield event
    for event in translator.finish():
        yield event
