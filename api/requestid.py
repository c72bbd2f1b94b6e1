"""``X-Request-Id`` on every response, the client's own when it is sane, otherwise a new one; and one log line per
request (:mod:`api.requestlog`) once its response has been sent.

The outermost middleware, so 401s, 404s and validation errors carry the id too; the id and the request's record
are kept in the request's state, where the routes (which put the id into the job) and the handler of unexpected
errors (which runs outside every middleware) find them.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.requestlog import RequestRecord

HEADER = "x-request-id"
# Printable, short and free of separators, so an echoed id can neither split a header nor a log line.
SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    value = state.get("request_id")
    return value if isinstance(value, str) else None


def record_of(scope: Scope) -> RequestRecord | None:
    state = scope.get("state") or {}
    value = state.get("request_record")
    return value if isinstance(value, RequestRecord) else None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER.encode(), b"").decode("latin-1")
        request_id = given if SANE_ID.match(given) else new_request_id()
        record = RequestRecord(scope["method"], scope["path"], request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["request_record"] = record

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
                record.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            record.write()
