"""Responses <-> chat completions: requests one way, answers and stream chunks the other.

Pure functions over pydantic models and dicts: nothing here knows FastAPI or Redis. Input items are first put in
the shape the API lists and stores them in (ids given, string content made a text part); a conversation of such
items (a previous response's, then the request's own) becomes chat messages; the request becomes a
:class:`ChatCompletionRequest`, so it passes the same validation and runs as the same job. The chat answer, or the
chat stream's chunks, become Response output items; the stream's events are made from them in
:mod:`api.responses.stream_events`.
"""

from __future__ import annotations

import time
import uuid
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
