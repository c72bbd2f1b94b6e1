"""Anthropic's error shape, ``{"type": "error", "error": {"type", "message"}}``, for the Messages paths.

The API's exception handlers and its key check ask :func:`is_anthropic_path` and answer these paths in this shape,
so the ``anthropic`` client raises its own typed errors (``BadRequestError``, ``AuthenticationError``, ...).
"""

from __future__ import annotations

from typing import Any

MESSAGES_PATH = "/v1/messages"
# HTTP status -> Anthropic's error type (docs: "Errors"); a 503 (no live worker, broker down) is "overloaded".
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
