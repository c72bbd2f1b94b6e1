"""API keys: ``Authorization: Bearer <key>`` (or Anthropic's ``x-api-key: <key>``) on every route but the open
ones, checked before any routing.

A pure ASGI middleware rather than a FastAPI dependency, so it also guards unknown routes (an unauthenticated
client learns nothing about which paths exist) and answers in OpenAI's 401 shape. Keys are compared in constant
time against every configured key, without stopping at a match, so response timing says nothing about a key.

Keys come from ``--api-keys`` (no limits) and from Redis (``queuechat keys``, see :mod:`broker.tenants`): once
Redis holds any key, every request needs one. A tenant's request is admitted under its limits (429 with
``Retry-After`` and ``x-ratelimit-*`` headers otherwise) and counts as running until its response has been sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.anthropic.errors import anthropic_error_body, is_anthropic_path
from api.errors import error_body, error_response
from api.tenants import TenantGate, rate_limit_headers
from broker.errors import BrokerUnavailable
from broker.tenants import current_tenant

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


LIMIT_MESSAGES = {
    "requests": "Rate limit reached for requests per minute on this API key. Try again in {retry}s.",
    "tokens": "Rate limit reached for tokens per minute on this API key. Try again in {retry}s.",
    "concurrent": "This API key has as many requests in flight as its limit allows. Try again when one has ended.",
}


class ApiKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        api_keys: Iterable[str],
        exempt_prefixes: Iterable[str] = (),
        tenants: TenantGate | None = None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.exempt = tuple(exempt_prefixes)  # mounted apps that check credentials themselves
        self.tenants = tenants

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
        token = token.strip()
        if token and key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            # a key that is not a static one is looked up (no cache of "no keys yet" may let a new key's first
            # requests pass unlimited); without a key, the API is open until some key exists
            tenant = await self.tenants.lookup(token) if token and self.tenants is not None else None
            open_api = (
                tenant is None and not self.keys and (self.tenants is None or not await self.tenants.any_tenants())
            )
        except BrokerUnavailable as exc:
            await error_response(exc, path)(scope, receive, send)
            return
        if open_api:  # no key anywhere
            await self.app(scope, receive, send)
            return
        if not token:
            await _unauthorized(path, MISSING_KEY, None)(scope, receive, send)
            return
        if tenant is None or tenant.revoked:
            # OpenAI shows a masked key; queuechat shows none of it, so a log of responses leaks nothing
            await _unauthorized(path, "Incorrect API key provided.", "invalid_api_key")(scope, receive, send)
            return
        assert self.tenants is not None
        try:
            outcome = await self.tenants.admit(tenant)
        except BrokerUnavailable as exc:
            await error_response(exc, path)(scope, receive, send)
            return
        headers = rate_limit_headers(outcome, tenant)
        if not outcome.admitted:
            message = LIMIT_MESSAGES[outcome.limit or "requests"].format(retry=headers["retry-after"])
            kind = "tokens" if outcome.limit == "tokens" else "requests"  # OpenAI's error types for the two limits
            await _limited(path, message, kind, headers)(scope, receive, send)
            return
        token_var = current_tenant.set(tenant)
        try:
            await self.app(scope, receive, _with_headers(send, headers))
        finally:
            current_tenant.reset(token_var)
            await self.tenants.release(tenant)


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """``send`` adding ``headers`` to the response's start."""
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _limited(path: str, message: str, kind: str, headers: dict[str, str]) -> JSONResponse:
    if is_anthropic_path(path):
        body = anthropic_error_body(429, message)
    else:
        body = error_body(message, kind, "rate_limit_exceeded")
    return JSONResponse(body, status_code=429, headers=headers)


def _unauthorized(path: str, message: str, code: str | None) -> JSONResponse:
    if is_anthropic_path(path):
        return JSONResponse(anthropic_error_body(401, message), status_code=401)
    return JSONResponse(error_body(message, "invalid_request_error", code), status_code=401)
