"""Every error leaves the API in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

All exception handlers live here, so no path can answer with a stack trace or a non-OpenAI body.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.errors import QueuechatError, QueueFull

log = logging.getLogger(__name__)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: QueuechatError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status, headers=headers)


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """OpenAI's message and param for the first of pydantic's errors (the API's and the Batch API's lines)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request. Send valid JSON.", None
    if kind == "extra_forbidden":
        return f"Unrecognized or unsupported request argument: {param}", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    detail = first.get("msg", "invalid value")
    return (f"Invalid value for '{param}': {detail}" if param else f"Invalid request: {detail}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueuechatError)
    async def _queuechat_error(_request: Request, exc: QueuechatError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, "invalid_request_error", "invalid_request", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key"}.get(exc.status_code)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type_, code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            error_body("The server had an error processing your request.", "server_error", "internal_error"),
            status_code=500,
        )
