"""A route's work, given up when its client hangs up before the answer is ready.

Starlette notices a disconnect only while it streams a response; a route still waiting for its jobs (a whole
non-streaming answer, or a stream's first event while its job is queued) would wait on, and its worker would
compute an answer nobody reads. :func:`unless_client_leaves` watches the connection meanwhile and cancels the
work when the client goes: the work's jobs are closed, which marks them cancelled for their workers (a queued
job is then skipped, a running one stopped within a step).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response

T = TypeVar("T")
# nginx's "client closed request": what the request log shows for an answer its client did not wait for
CLIENT_CLOSED_REQUEST = 499


async def _client_left(request: Request) -> None:
    """Returns once the client has disconnected. The body has been read already, so the only message left to
    receive is the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T | Response:
    """``work``'s result, or (the client hung up first) an empty 499 after ``work`` was cancelled; the 499 goes
    nowhere, it is for the request log."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # also when the route itself is cancelled (the server stops): nothing is left running
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not task.cancelled() and task.done():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # its cleanup (closing the jobs) runs before the route returns
    return Response(status_code=CLIENT_CLOSED_REQUEST)
