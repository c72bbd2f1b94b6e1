"""Responses <-> chat completions: requests one way, answers and stream chunks the other.

Pure functions over pydantic models and dicts: nothing here knows FastAPI or Redis. Input items are first put in
the shape the API lists and stores them in (ids given, string content made a text part); a conversation of such
items (a previous response's, then the request's own) becomes chat messages; the request becomes a
:class:`ChatCompletionRequest`, so it passes the same validation and runs as the same job. The chat answer, or the
chat stream's chunks, become Response output items or the Responses stream events.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from api.responses.schemas import InputItem, ResponsesRequest, ToolChoiceObject
from broker.errors import QueuechatError
from serving.requests import ChatCompletionRequest

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_id_of(chat_id: str) -> str:
    """``resp_`` and the job's id, so the worker's log line can be found from the response."""
    return "resp_" + chat_id.removeprefix("chatcmpl-")


# ---------------------------------------------------------------------------------------------- input items


def _part(part: Any, role: str) -> dict[str, Any]:
    if part.type == "refusal":
        return {"type": "refusal", "refusal": part.value()}
    if role == "assistant":
        return {"type": "output_text", "text": part.value(), "annotations": part.annotations or []}
    return {"type": "input_text", "text": part.value()}


def stored_item(item: InputItem) -> dict[str, Any]:
    """An input item as it is listed and stored: with an id and a status, string content as one text part."""
    if item.type == "function_call":
        return {
            "id": item.id or new_id("fc"),
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "status": item.status or "completed",
        }
    if item.type == "reasoning":
        reasoning = item.content if isinstance(item.content, list) else []
        return {
            "id": item.id or new_id("rs"),
            "type": "reasoning",
            "summary": (item.model_extra or {}).get("summary") or [],
            "content": [{"type": "reasoning_text", "text": p.text or ""} for p in reasoning],
            "status": item.status or "completed",
        }
    if item.type == "function_call_output":
        return {
            "id": item.id or new_id("fco"),
            "type": "function_call_output",
            "call_id": item.call_id,
            "output": item.text(),
            "status": item.status or "completed",
        }
    role = str(item.role)
    content = item.content if isinstance(item.content, list) else None
    parts = [_part(p, role) for p in content] if content is not None else None
    if parts is None:
        kind = "output_text" if role == "assistant" else "input_text"
        parts = [{"type": kind, "text": item.text(), **({"annotations": []} if role == "assistant" else {})}]
    return {
        "id": item.id or new_id("msg"),
        "type": "message",
        "role": role,
        "content": parts,
        "status": item.status or "completed",
    }


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(body.input, str):
        return [stored_item(InputItem(role="user", content=body.input))]
    return [stored_item(item) for item in body.input]


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as chat messages: an assistant's message and the function calls after it become one assistant
    message with ``tool_calls``; each function call output a ``tool`` message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


# ---------------------------------------------------------------------------------------------- the request


def _tool_choice(body: ResponsesRequest) -> Any:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceObject):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def to_chat_request(body: ResponsesRequest, conversation: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat completion request that asks the model for what ``body`` asks, after ``conversation`` (the
    previous response's items and this request's own input, stored-item shaped)."""
    messages = chat_messages(conversation)
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    request: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": bool(body.stream),
        "user": body.user,
    }
    if body.tools:
        request["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters,
                             "strict": t.strict},
            }
            for t in body.tools
        ]  # fmt: skip
        request["tool_choice"] = _tool_choice(body)
        request["parallel_tool_calls"] = body.parallel_tool_calls
    text_format = body.text.format if body.text else None
    if text_format is not None and text_format.type != "text":
        schema = text_format.output_schema()
        request["response_format"] = (
            {"type": "json_object"}
            if text_format.type == "json_object"
            else {"type": "json_schema", "json_schema": {"name": text_format.name, "schema": schema}}
        )
    if body.stream:
        request["stream_options"] = {"include_usage": True}  # the final response carries the usage
    return ChatCompletionRequest.model_validate(request)


# ---------------------------------------------------------------------------------------------- the response


def _text_config(body: ResponsesRequest) -> dict[str, Any]:
    text_format = body.text.format if body.text else None
    if text_format is None:
        shown: dict[str, Any] = {"type": "text"}
    else:
        shown = text_format.model_dump(by_alias=True, exclude_none=True)
    return {"format": shown, "verbosity": "medium"}


def response_object(
    body: ResponsesRequest,
    response_id: str,
    created_at: float,
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object, as ``POST /v1/responses`` answers it and ``GET`` returns it."""
    choice = body.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "background": bool(body.background),
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": None,
        "metadata": body.metadata or {},
        "model": body.model,
        "output": output or [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.safety_identifier,
        "service_tier": "default",
        "store": body.stored,
        "temperature": body.temperature,
        "text": _text_config(body),
        "tool_choice": choice.model_dump() if isinstance(choice, ToolChoiceObject) else (choice or "auto"),
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": t.strict,
            }
            for t in body.tools or []
        ],
        "top_logprobs": 0,
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": body.user,
    }


def finish(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """The response completed, or incomplete when the answer was cut by max_output_tokens."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
        response["completed_at"] = None
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
    return response


def failed(response: dict[str, Any], exc: QueuechatError) -> dict[str, Any]:
    code = "rate_limit_exceeded" if exc.status == 429 else "invalid_prompt" if exc.status < 500 else "server_error"
    response["status"] = "failed"
    response["error"] = {"code": code, "message": exc.message}
    response["completed_at"] = None
    return response


def usage_of(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """A reasoning model's reasoning (the worker's --reasoning-parser), as its text: there is no summary."""
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call["function"]
    return {
        "id": "fc_" + call["id"].removeprefix("call_"),
        "type": "function_call",
        "call_id": call["id"],
        "name": function["name"],
        "arguments": function["arguments"] if status == "completed" else "",
        "status": status,
    }


def output_of(completion: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A chat completion's output items and finish reason."""
    choice = completion["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    output: list[dict[str, Any]] = []
    cut = choice["finish_reason"] == "length"
    reasoning = message.get("reasoning_content")
    if reasoning:
        ended = "incomplete" if cut and not (message.get("content") or calls) else "completed"
        output.append(reasoning_item(new_id("rs"), reasoning, ended))
    if message.get("content") or (not calls and not reasoning):
        output.append(message_item(new_id("msg"), message.get("content") or "", "incomplete" if cut else "completed"))
    output += [call_item(call) for call in calls]
    return output, choice["finish_reason"]


def answer_response(
    body: ResponsesRequest, completion: dict[str, Any], response_id: str, created_at: float
) -> dict[str, Any]:
    output, finish_reason = output_of(completion)
    usage = completion["usage"]
    response = response_object(
        body, response_id, created_at, "completed", output, usage_of(usage["prompt_tokens"], usage["completion_tokens"])
    )
    return finish(response, finish_reason)


# ---------------------------------------------------------------------------------------------- the stream


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
