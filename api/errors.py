"""Every error leaves the API in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

All exception handlers live here, so no path can answer with a stack trace or a non-OpenAI body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.anthropic.errors import anthropic_error_body, is_anthropic_path
from api.requestid import HEADER, request_id_of
from broker.errors import QueuechatError, QueueFull
from serving.errors import error_body, error_of, validation_message
from serving.responses import ChatCompletionChunk, Completion, ErrorResponse

__all__ = ["ERROR_RESPONSES", "error_body", "error_response", "install_error_handlers", "validation_message"]

log = logging.getLogger(__name__)

# What /openapi.json documents for every OpenAI route (each router of those takes it): each error status the API
# answers, with OpenAI's error body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request (OpenAI's invalid_request_error)",
        401: "Missing or wrong API key",
        404: "Unknown route, model, file or batch",
        405: "Method not allowed",
        413: "Upload too large",
        429: "The model's queue is full (Retry-After)",
        500: "Server error",
        502: "A worker's reply could not be read",
        503: "The broker, or every worker of the model, is unavailable",
        504: "The request passed its deadline",
    }.items()
}
# The chat and completions routes stream their chunks as Server-Sent Events with ``stream: true``.
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer; with stream: true, Server-Sent Events of chunks, then [DONE]",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string", "description": "data: lines of chunks, then data: [DONE]"},
            }
        },
    }
}
CHUNK_MODELS = (ChatCompletionChunk, Completion)  # documented in the schema's components (see api.app)


def error_response(exc: QueuechatError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    if is_anthropic_path(path):
        return JSONResponse(anthropic_error_body(exc.status, exc.message), status_code=exc.status, headers=headers)
    return JSONResponse(error_of(exc), status_code=exc.status, headers=headers)


def _respond(
    path: str,
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape of the API the path belongs to: Anthropic's on its Messages paths, else OpenAI's
    (``body``)."""
    if is_anthropic_path(path):
        body = anthropic_error_body(status, body["error"]["message"])
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueuechatError)
    async def _queuechat_error(request: Request, exc: QueuechatError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return _respond(request.url.path, 400, error_body(message, "invalid_request_error", "invalid_request", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key"}.get(exc.status_code)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _respond(request.url.path, exc.status_code, error_body(str(exc.detail), type_, code), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request.scope)
        log.exception("unexpected error (request %s)", request_id)
        # this handler runs outside every middleware, so the request id header is set here
        body = error_body("The server had an error processing your request.", "server_error", "internal_error")
        return _respond(request.url.path, 500, body, {HEADER: request_id} if request_id else None)
