"""OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``, and how a validation failure reads in it.

Shared by the API's exception handlers, the batch runner's error lines and the chunk streams' error chunk, so an
error has one shape wherever it is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.errors import InvalidRequest, QueuechatError


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_of(exc: QueuechatError) -> dict[str, Any]:
    """The body an error of the project's tree is answered with."""
    return error_body(exc.message, exc.type, exc.code, exc.param)


def invalid_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> dict[str, Any]:
    return error_body(message, "invalid_request_error", code, param)


# Python type names pydantic puts in an error's location for the branch of a union it tried (``str``, ``int``)
_BRANCH_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param(loc: tuple[Any, ...]) -> str | None:
    """An error location in OpenAI's notation, ``messages[0].content[1]``, without pydantic's union branch labels
    (``str``, ``list[ContentPart]``, ``function-after[...]``)."""
    param = ""
    for i, part in enumerate(loc):
        if i == 0 and part == "body":
            continue
        if isinstance(part, int):
            param += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _BRANCH_NAMES:
            param += f".{part}" if param else part
    return param or None


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """OpenAI's message and param for pydantic's errors (the API's requests and the Batch API's lines)."""
    # Of a union's failed branches, the deepest error is the one that got furthest, so it says what is wrong
    # (a missing ``text`` in a content part, not "Input should be a valid string").
    first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
    param = _param(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request. Send valid JSON.", None
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {detail}" if param else f"Invalid request: {detail}"), param


class ContextLengthExceeded(InvalidRequest):
    """A prompt the model's context cannot hold, refused before a worker tokenises it (the worker's own refusal,
    after tokenising, has the same code)."""

    code = "context_length_exceeded"


class RequestTooLarge(QueuechatError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"
