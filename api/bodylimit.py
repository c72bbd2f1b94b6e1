"""A cap on the size of a request body (``QUEUECHAT_MAX_REQUEST_BYTES``), checked before anything parses it.

Without it a client could post a body of any size; the API parsed it whole and a worker tokenised it whole (a 50 MB
message took a worker to 12.8 GB). A body over the cap is answered 413 in the API's error shape once the cap is
passed, from its ``Content-Length`` before any of it is read, or while it is read. File uploads (multipart) have
their own, larger limit (``QUEUECHAT_FILES_MAX_BYTES``) and pass through.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from serving.errors import RequestTooLarge


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body here, counting, and hand it on as it came (later messages, a disconnect, pass through).
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _exempt(scope: Scope) -> bool:
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        return bool(content_type.lower().startswith(b"multipart/form-data"))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = RequestTooLarge(f"the request body is larger than this server accepts ({self.max_bytes} bytes)")
        await error_response(exc, scope.get("path", ""))(scope, receive, send)
