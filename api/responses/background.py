"""Background responses: generation as a task of the API process that created them, its record in Redis.

The record is created ``queued``, moved to ``in_progress`` when the task starts and to its final status at the
end, each move compare-and-set (:meth:`ResponseStore.set_status`). A cancel, from any API replica, moves the
record to ``cancelled``; the task checks its record every :data:`CANCEL_POLL` seconds and stops its job when it
sees that (at once when the cancel reaches the replica running it). A streamed background response relays the
task's events to its client; a client that goes away leaves the task running.

What is not here: a task dies with its API process (its record stays ``in_progress`` until its TTL), and a stream
cannot be resumed with ``starting_after`` (that needs a per-job event log every replica can read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from api.metrics import ApiMetrics
from api.responses.generate import answer, open_stream
from api.responses.schemas import ResponsesRequest
from api.responses.translate import Event, StreamTranslator, answer_response, failed, translated_stream
from api.schemas import ChatCompletionRequest
from broker.errors import QueuechatError
from broker.producer import JobEvents, Producer
from broker.responses import RUNNING, ResponseStore

log = logging.getLogger(__name__)

CANCEL_POLL = 0.5  # seconds between a running background task's looks at its record


class BackgroundRuns:
    """The background responses this API process is running, by response id."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def cancel(self, response_id: str) -> None:
        task = self.tasks.get(response_id)
        if task is not None:
            task.cancel()

    def start(
        self,
        store: ResponseStore,
        producer: Producer,
        metrics: ApiMetrics | None,
        body: ResponsesRequest,
        chat: ChatCompletionRequest,
        response: dict[str, Any],
    ) -> asyncio.Queue[Event | None] | None:
        """Start the task; for a streamed response, the queue its events arrive on (``None`` ends it)."""
        sink: asyncio.Queue[Event | None] | None = asyncio.Queue() if body.stream else None
        response_id = response["id"]

        async def generate() -> dict[str, Any]:
            if sink is None:
                completion = await answer(producer, chat, metrics)
                return answer_response(body, completion, response_id, response["created_at"])
            translator = StreamTranslator(response)
            streams: list[JobEvents] = []
            try:
                for event in translator.start():  # created (queued), then in_progress
                    sink.put_nowait(event)
                try:
                    streams, chunks = await open_stream(producer, chat, metrics, response_id.removeprefix("resp_"))
                except QueuechatError as exc:
                    for event in translator.fail(exc):
                        sink.put_nowait(event)
                    return translator.response
                async for event in translated_stream(chunks, translator, started=True):
                    sink.put_nowait(event)
                return translator.response
            finally:
                for s in streams:
                    s.close()

        task = asyncio.create_task(self._run(store, response, generate), name=f"response-{response_id}")
        self.tasks[response_id] = task
        task.add_done_callback(lambda _: self._finished(response_id, sink))
        return sink

    def _finished(self, response_id: str, sink: asyncio.Queue[Event | None] | None) -> None:
        self.tasks.pop(response_id, None)
        if sink is not None:
            sink.put_nowait(None)

    async def _run(
        self,
        store: ResponseStore,
        response: dict[str, Any],
        generate: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    ) -> None:
        response_id = response["id"]
        if not await store.set_status(response_id, "in_progress", allowed_from=("queued",)):
            return  # cancelled (or deleted) before it started
        work = asyncio.create_task(generate())
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=CANCEL_POLL)
                if not work.done() and await store.status(response_id) != "in_progress":
                    work.cancel()  # cancelled on another replica, or deleted
            try:
                final = work.result()
            except QueuechatError as exc:
                final = failed(dict(response), exc)
            except asyncio.CancelledError:
                return
            await store.set_status(response_id, final["status"], allowed_from=RUNNING, response=final)
        except asyncio.CancelledError:  # cancelled on this replica
            work.cancel()
            raise
        except Exception:
            log.exception("background response %s failed", response_id)
            with contextlib.suppress(Exception):
                await store.set_status(response_id, "failed", allowed_from=RUNNING)


async def relay(sink: asyncio.Queue[Event | None]) -> AsyncGenerator[Event, None]:
    """A background response's events, for its streaming client, until the run ends."""
    while True:
        event = await sink.get()
        if event is None:
            return
        yield event
