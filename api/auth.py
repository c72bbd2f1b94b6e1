"""API keys: ``Authorization: Bearer <key>`` (or Anthropic's ``x-api-key: <key>``) on every route but the open
ones, checked before any routing.

A pure ASGI middleware rather than a FastAPI dependency, so it also guards unknown routes (an unauthenticated
client learns nothing about which paths exist) and answers in OpenAI's 401 shape. Keys are compared in constant
time against every configured key, without stopping at a match, so response timing says nothing about a key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.anthropic.errors import anthropic_error_body, is_anthropic_path
from api.errors import error_body

# /health is for load balancers; the docs and the schema only describe the API (no models, no data), and tools
# such as schemathesis and client generators read them.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def key_matches(token: bytes, keys: Iterable[bytes]) -> bool:
    match = False
    for key in keys:
        match |= secrets.compare_digest(token, key)  # no short-circuit: every key is compared
    return match


def api_key_login(api_keys: Iterable[str]) -> Callable[[str, str], bool]:
    """A login check for the web UI: any user name, an API key as the password."""
    keys = [k.encode() for k in api_keys]

    def check(_user: str, password: str) -> bool:
        return key_matches((password or "").encode(), keys)

    return check


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_keys: Iterable[str], exempt_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.exempt = tuple(exempt_prefixes)  # mounted apps that check credentials themselves

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or any(path == p or path.startswith(p + "/") for p in self.exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # CORS preflights carry no credentials by design; the CORS middleware outside this one answers them.
        if scope["type"] != "http" or self._open(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            token = headers.get(b"x-api-key", b"")  # Anthropic's SDKs send the key this way
            scheme = b"bearer"
        path = scope["path"]
        if not token.strip():
            await _unauthorized(path, MISSING_KEY, None)(scope, receive, send)
            return
        if not key_matches(token.strip(), self.keys):
            # OpenAI shows a masked key; queuechat shows none of it, so a log of responses leaks nothing
            await _unauthorized(path, "Incorrect API key provided.", "invalid_api_key")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _unauthorized(path: str, message: str, code: str | None) -> JSONResponse:
    if is_anthropic_path(path):
        return JSONResponse(anthropic_error_body(401, message), status_code=401)
    return JSONResponse(error_body(message, "invalid_request_error", code), status_code=401)
