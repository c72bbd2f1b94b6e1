"""Background responses: generation as a task of the API process that created them, its record in Redis.

The record is created ``queued``, moved to ``in_progress`` when the task starts and to its final status at the
end, each move compare-and-set (:meth:`ResponseStore.set_status`). A cancel, from any API replica, moves the
record to ``cancelled``; the task checks its record every :data:`CANCEL_POLL` seconds and stops its job when it
sees that (at once when the cancel reaches the replica running it). A streamed background response relays the
task's events to its client; a client that goes away leaves the task running.

A streamed background response keeps what it needs in its job's event log, so any replica can stream it again
(``GET /v1/responses/{id}?stream=true&starting_after=N``, see :func:`api.responses.generate.reopen_stream`).

What is not here: a task dies with its API process (its record stays ``in_progress`` until its TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from api.responses.generate import answer, open_stream, resume_record
from api.responses.schemas import ResponsesRequest
from api.responses.stream_events import StreamTranslator, translated_stream
from api.responses.translate import Event, answer_response, failed
from broker.errors import QueuechatError
from broker.jobevents import JobEvents
from broker.producer import Producer
from broker.responses import RUNNING, ResponseStore
from serving.jobs import JobObserver
from serving.requests import ChatCompletionRequest

log = logging.getLogger(__name__)

CANCEL_POLL = 0.5  # seconds between a running background task's looks at its record


class BackgroundRuns:
    """The background responses this API process is running, by response id."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}

    def cancel(self, response_id: str) -> None:
        """Stop the run now, if it runs here (a run elsewhere sees its record change within CANCEL_POLL)."""
        stop = self._stops.get(response_id)
        if stop is not None:
            stop.set()

    def start(
        self,
        store: ResponseStore,
        producer: Producer,
        metrics: JobObserver | None,
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
            resume = resume_record(chat, copy.deepcopy(response))  # as created (queued), before the translator runs
            translator = StreamTranslator(response)
            streams: list[JobEvents] = []
            try:
                for event in translator.start():  # created (queued), then in_progress
                    sink.put_nowait(event)
                try:
                    job_hex = response_id.removeprefix("resp_")
                    streams, chunks = await open_stream(producer, chat, metrics, job_hex, resume)
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

        stop = self._stops[response_id] = asyncio.Event()
        task = asyncio.create_task(self._run(store, response, generate, stop), name=f"response-{response_id}")
        self.tasks[response_id] = task
        task.add_done_callback(lambda _: self._finished(response_id, sink))
        return sink

    def _finished(self, response_id: str, sink: asyncio.Queue[Event | None] | None) -> None:
        self.tasks.pop(response_id, None)
        self._stops.pop(response_id, None)
        if sink is not None:
            sink.put_nowait(None)

    async def _run(
        self,
        store: ResponseStore,
        response: dict[str, Any],
        generate: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
        stop: asyncio.Event,
    ) -> None:
        response_id = response["id"]
        if not await store.set_status(response_id, "in_progress", allowed_from=("queued",)):
            return  # cancelled (or deleted) before it started
        work = asyncio.create_task(generate())
        stopped = asyncio.create_task(stop.wait())
        try:
            while not work.done():
                waiting = {work} if stop.is_set() else {work, stopped}
                await asyncio.wait(waiting, timeout=CANCEL_POLL, return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    break
                if stop.is_set() or await store.status(response_id) != "in_progress":
                    # cancelled here, on another replica, or deleted. Cancelled again each round until it ends:
                    # Python 3.11's wait_for can lose a cancel that meets an arriving event.
                    work.cancel()
            try:
                final = work.result()
            except QueuechatError as exc:
                final = failed(dict(response), exc)
            except asyncio.CancelledError:
                return
            await store.set_status(response_id, final["status"], allowed_from=RUNNING, response=final)
        except asyncio.CancelledError:  # the API process is stopping
            work.cancel()
            raise
        except Exception:
            work.cancel()
            log.exception("background response %s failed", response_id)
            with contextlib.suppress(Exception):
                await store.set_status(response_id, "failed", allowed_from=RUNNING)
        finally:
            stopped.cancel()


async def relay(sink: asyncio.Queue[Event | None]) -> AsyncGenerator[Event, None]:
    """A background response's events, for its streaming client, until the run ends."""
    while True:
        event = await sink.get()
        if event is None:
            return
        yield event
