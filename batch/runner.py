"""Runs one batch (the rq job a batch worker executes): feed its lines to the models at low priority, write results.

Each line runs exactly as the non-streaming endpoint runs a request (the same validation, :func:`chat_answer` /
:func:`completion_answer`, the same error bodies), but on the models' batch streams, which workers read only when
no interactive job waits. At most ``batch_max_in_flight`` lines are queued or running at once.

Durability: a line counts as finished once its result is fsynced into the output or error file; Redis then
records it (``{{p}:batches}:done:{id}``, and the live counts). A runner that starts on a batch that was already going
(its worker was killed, or stopped) reopens both files, drops a torn last line, and feeds only the lines whose
custom_id is in neither file, so every line appears in the results exactly once. A lease key with a TTL names the
runner at work; a batch worker re-queues batches whose lease expired (see :mod:`batch.worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from pydantic import ValidationError
from redis.exceptions import RedisError
from rq import get_current_job

from batch.filestore import BatchLine, ResultFile, new_id, not_unicode_at, read_batch_lines
from broker.batches import BatchStatus, BatchStore
from broker.connection import async_client_like
from broker.errors import QueuechatError
from broker.producer import Producer
from broker.settings import Settings
from serving.chat import chat_answer
from serving.completions import completion_answer
from serving.errors import error_body, invalid_request, validation_message
from serving.requests import ChatCompletionRequest, CompletionRequest
from serving.responses import ChatCompletion, Completion

log = logging.getLogger(__name__)

# Worth retrying rather than failing the line: a full queue (429), no worker or broker right now, a worker that died
# mid-line (503), a line that waited past its deadline behind interactive traffic (504).
TRANSIENT = {429, 503, 504}
WATCH_INTERVAL = 0.5


@dataclass
class RunContext:
    """What the batch worker running a batch hands it: its settings, and the event it sets on SIGTERM (stop
    feeding, let running lines end, leave the batch for a resume)."""

    settings: Settings
    stop_requested: threading.Event = field(default_factory=threading.Event)


# Set by the batch worker around each job it performs (see :meth:`batch.worker.BatchWorker.execute_job`).
current_run: ContextVar[RunContext] = ContextVar("current_run")


def run_batch(key_prefix: str, batch_id: str) -> str:
    """The rq job. Redis is the rq job's own connection; the files directory and limits come from the batch
    worker's settings, the key prefix from the job."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_batch runs as an rq job, inside a batch worker")
    context = current_run.get(None) or RunContext(Settings())
    settings = context.settings.model_copy(update={"key_prefix": key_prefix})
    runner = BatchRunner(settings, batch_id, stop_requested=context.stop_requested)
    return asyncio.run(runner.run(async_client_like(job.connection)))


def _result(custom_id: str, status: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }


class BatchRunner:
    def __init__(self, settings: Settings, batch_id: str, *, stop_requested: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop_requested = stop_requested or threading.Event()
        self.batch_id = batch_id
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_ttl = settings.heartbeat_ttl
        self.lease_lost = False
        self.expired = False
        self.cancelled = False
        self.stop = asyncio.Event()
        self.ended = asyncio.Event()  # the run is over: the lease keeper and the watcher stop

    async def run(self, client: aredis.Redis) -> str:
        producer = Producer(client, self.settings)
        store = BatchStore(producer.client, producer.keys)
        try:
            return await self._run(producer, store)
        finally:
            await producer.close()

    async def _run(self, producer: Producer, store: BatchStore) -> str:
        fields = await store.batch_fields(self.batch_id)
        if fields is None:
            return "no such batch"
        if BatchStatus(fields["status"]) in {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED,
                                             BatchStatus.CANCELLED}:  # fmt: skip
            return f"already {fields['status']}"
        if not await store.take_lease(self.batch_id, self.owner, self.lease_ttl):
            return "running on another batch worker"
        meta = json.loads(fields["meta"])
        keeper = asyncio.create_task(self._keep_lease(store))
        watcher = asyncio.create_task(self._watch(store, meta["expires_at"]))
        output = errors = None
        lock = None
        try:
            await store.set_status(self.batch_id, BatchStatus.IN_PROGRESS, allowed_from={BatchStatus.VALIDATING})
            found = await store.file(meta["input_file_id"])
            if found is None or not Path(found[1]).exists():
                return await self._fail(store, "input_file_missing", f"input file {meta['input_file_id']} is gone")
            lines = await asyncio.to_thread(read_batch_lines, Path(found[1]))
            directory = self.settings.files_dir
            directory.mkdir(parents=True, exist_ok=True)
            lock = (directory / f"{self.batch_id}.lock").open("w")
            try:
                # Belt and braces: should a runner stall past its lease while another takes over, the two never
                # write the same result files (the lock dies with its process).
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "its result files are held by another runner"
            output = await asyncio.to_thread(ResultFile, directory / f"{self.batch_id}.output.jsonl")
            errors = await asyncio.to_thread(ResultFile, directory / f"{self.batch_id}.errors.jsonl")
            await self._record_recovered(store, output, errors)
            pending = [line for line in lines if line.custom_id not in output.custom_ids | errors.custom_ids]
            if len(pending) < len(lines):
                log.info("batch %s: resuming, %d of %d lines left", self.batch_id, len(pending), len(lines))
            left = await self._feed(producer, store, meta["endpoint"], pending, output, errors)
            if self.lease_lost or self.stop_requested.is_set():
                log.warning("batch %s: stopped with %d lines left; it will be resumed", self.batch_id, len(left))
                return "interrupted"
            return await self._finish(store, left, output, errors, fields.get("owner", ""))
        finally:
            await self._stop_helpers(keeper, watcher)
            for f in (output, errors):
                if f is not None:
                    f.close()
            if lock is not None:
                lock.close()
            with contextlib.suppress(RedisError):
                await store.release_lease(self.batch_id, self.owner)

    async def _record_recovered(self, store: BatchStore, output: ResultFile, errors: ResultFile) -> None:
        """Lines written before a crash but not yet recorded in Redis are recorded now."""
        done = await store.done_ids(self.batch_id)
        for custom_id in output.custom_ids - done.keys():
            await store.mark_done(self.batch_id, custom_id, ok=True)
        for custom_id in errors.custom_ids - done.keys():
            await store.mark_done(self.batch_id, custom_id, ok=False)

    # ------------------------------------------------------------------ feeding

    async def _feed(
        self,
        producer: Producer,
        store: BatchStore,
        endpoint: str,
        lines: list[BatchLine],
        output: ResultFile,
        errors: ResultFile,
    ) -> list[BatchLine]:
        """Run lines, at most ``batch_max_in_flight`` at once, until all ran or feeding must stop; returns the
        lines that were never started."""
        slots = asyncio.Semaphore(self.settings.batch_max_in_flight)
        running: set[asyncio.Task[None]] = set()
        fed = 0
        for line in lines:
            await slots.acquire()
            if self.stop.is_set():
                slots.release()
                break
            task = asyncio.create_task(self._run_line(producer, store, endpoint, line, output, errors))
            task.add_done_callback(lambda _: slots.release())
            running.add(task)
            fed += 1
        if running:
            await asyncio.gather(*running)
        return lines[fed:]

    async def _run_line(
        self,
        producer: Producer,
        store: BatchStore,
        endpoint: str,
        line: BatchLine,
        output: ResultFile,
        errors: ResultFile,
    ) -> None:
        record = await self._execute(producer, endpoint, line)
        if record is None:  # given up while retrying because the batch stopped: it stays to do
            return
        ok = record["response"]["status_code"] == 200
        (output if ok else errors).append(record)
        try:
            await store.mark_done(self.batch_id, line.custom_id, ok)
        except RedisError as exc:  # the file holds the line; a resume records it
            log.warning("batch %s: could not record line %s: %s", self.batch_id, line.custom_id, exc)

    async def _execute(self, producer: Producer, endpoint: str, line: BatchLine) -> dict[str, Any] | None:
        request_id = f"req_{uuid.uuid4().hex}"
        body: ChatCompletionRequest | CompletionRequest
        where = not_unicode_at(line.body)
        if where is not None:
            message = f"Invalid value for '{where}': it is not valid Unicode (a lone surrogate such as \\ud800)."
            return _result(line.custom_id, 400, request_id, invalid_request(message, where or None))
        try:
            if endpoint == "/v1/chat/completions":
                body = ChatCompletionRequest.model_validate(line.body)
            elif endpoint == "/v1/completions":
                body = CompletionRequest.model_validate(line.body)
            else:
                message = f"the batch worker cannot run {endpoint} requests"
                return _result(line.custom_id, 400, request_id, error_body(message, "invalid_request_error", None))
        except ValidationError as exc:
            message, param = validation_message(exc.errors())
            body_ = error_body(message, "invalid_request_error", "invalid_request", param)
            return _result(line.custom_id, 400, request_id, body_)
        if body.stream:
            message = "stream is not supported in a batch"
            return _result(
                line.custom_id, 400, request_id, error_body(message, "invalid_request_error", None, "stream")
            )
        give_up = time.monotonic() + self.settings.request_timeout
        backoff = 0.5
        while True:
            try:
                answer: ChatCompletion | Completion
                if isinstance(body, ChatCompletionRequest):
                    answer = await chat_answer(producer, body, low_priority=True, request_id=request_id)
                else:
                    answer = await completion_answer(producer, body, low_priority=True, request_id=request_id)
                return _result(line.custom_id, 200, answer.id, answer.model_dump(mode="json"))
            except QueuechatError as exc:
                if exc.status in TRANSIENT and time.monotonic() < give_up:
                    if self.stop.is_set():
                        return None
                    log.info("batch %s: line %s: %s; retrying", self.batch_id, line.custom_id, exc.message)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                return _result(line.custom_id, exc.status, request_id, error_body(exc.message, exc.type, exc.code,
                                                                                 exc.param))  # fmt: skip
            except Exception as exc:  # one bad line never takes the batch down
                log.exception("batch %s: line %s failed", self.batch_id, line.custom_id)
                body_ = error_body(f"{type(exc).__name__}: {exc}", "server_error", "internal_error")
                return _result(line.custom_id, 500, request_id, body_)

    # ------------------------------------------------------------------ control

    async def _stop_helpers(self, *tasks: asyncio.Task[None]) -> None:
        """End the lease keeper and the watcher, and wait until they have ended. A cancel alone can be lost: Python
        3.11's ``asyncio.wait_for``, through which redis-py sends each command, returns the command's result instead
        of raising when the cancel meets a command that just finished; a helper that lost its cancel would loop on,
        and ``asyncio.run()`` (which waits for every task) never returned. So they also stop on ``ended``, within
        one of their intervals."""
        self.ended.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep_lease(self, store: BatchStore) -> None:
        while not self.ended.is_set():
            await asyncio.sleep(self.settings.heartbeat_interval)
            if self.ended.is_set():  # never renew a lease the run has released
                return
            try:
                if not await store.renew_lease(self.batch_id, self.owner, self.lease_ttl):
                    log.error("batch %s: lost its lease to another batch worker; stopping", self.batch_id)
                    self.lease_lost = True
                    self.stop.set()
                    return
            except RedisError as exc:
                log.warning("batch %s: could not renew the lease: %s", self.batch_id, exc)

    async def _watch(self, store: BatchStore, expires_at: float) -> None:
        """Stop feeding on cancel, at the completion window's end, or when the batch worker is told to stop."""
        while not self.stop.is_set() and not self.ended.is_set():
            if self.stop_requested.is_set():
                self.stop.set()
            elif time.time() >= expires_at:
                self.expired = True
                self.stop.set()
            else:
                try:
                    if await store.status(self.batch_id) == BatchStatus.CANCELLING:
                        self.cancelled = True
                        self.stop.set()
                except RedisError as exc:
                    log.warning("batch %s: cannot read its status: %s", self.batch_id, exc)
            await asyncio.sleep(WATCH_INTERVAL)

    # ------------------------------------------------------------------ the end

    async def _fail(self, store: BatchStore, code: str, message: str) -> str:
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        await store.set_fields(self.batch_id, errors=json.dumps(errors))
        await store.set_status(
            self.batch_id,
            BatchStatus.FAILED,
            allowed_from={BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING},
        )
        return "failed"

    async def _finish(
        self, store: BatchStore, left: list[BatchLine], output: ResultFile, errors: ResultFile, owner: str
    ) -> str:
        status = await store.status(self.batch_id)
        if status == BatchStatus.CANCELLING:
            final = BatchStatus.CANCELLED
        elif self.expired:
            final = BatchStatus.EXPIRED
            for line in left:  # OpenAI's way: each line that never ran is an error of the expired batch
                errors.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex}",
                        "custom_id": line.custom_id,
                        "response": None,
                        "error": {"code": "batch_expired", "message": "the batch expired before this line ran"},
                    }
                )
                await store.mark_done(self.batch_id, line.custom_id, ok=False)
        else:
            final = BatchStatus.COMPLETED
            await store.set_status(self.batch_id, BatchStatus.FINALIZING, allowed_from={BatchStatus.IN_PROGRESS})
        for kind, result in (("output", output), ("error", errors)):
            if result.size:
                file_id = new_id("file")
                obj = {
                    "id": file_id,
                    "object": "file",
                    "bytes": result.size,
                    "created_at": int(time.time()),
                    "filename": f"{self.batch_id}_{kind}.jsonl",
                    "purpose": "batch_output",
                    "status": "processed",
                    "status_details": None,
                    "expires_at": None,
                }
                await store.add_file(obj, str(result.path), owner)  # the batch's key reads its results
                await store.set_fields(self.batch_id, **{f"{kind}_file_id": file_id})
        moved = await store.set_status(
            self.batch_id,
            final,
            allowed_from={BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING},
        )
        log.info("batch %s: %s", self.batch_id, final.value if moved else "finished, but its status moved on")
        return final.value
