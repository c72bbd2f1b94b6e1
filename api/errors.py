"""Every error leaves the API in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

All exception handlers live here, so no path can answer with a stack trace or a non-OpenAI body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.anthropic.errors import anthropic_error_body, is_anthropic_path
from api.requestid import HEADER, request_id_of
from broker.errors import QueuechatError, QueueFull

log = logging.getLogger(__name__)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: QueuechatError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    return _respond(path, exc.status, exc.message, exc.type, exc.code, exc.param, headers)


def _respond(
    path: str,
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape of the API the path belongs to: Anthropic's on its Messages paths, else OpenAI's."""
    if is_anthropic_path(path):
        return JSONResponse(anthropic_error_body(status, message), status_code=status, headers=headers)
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueuechatError)
    async def _queuechat_error(request: Request, exc: QueuechatError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return _respond(request.url.path, 400, message, "invalid_request_error", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key"}.get(exc.status_code)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _respond(request.url.path, exc.status_code, str(exc.detail), type_, code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request.scope)
        log.exception("unexpected error (request %s)", request_id)
        # this handler runs outside every middleware, so the request id header is set here
        message = "The server had an error processing your request."
        headers = {HEADER: request_id} if request_id else None
        return _respond(request.url.path, 500, message, "server_error", "internal_error", headers=headers)
