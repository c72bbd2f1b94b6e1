"""The consume loop: Redis on one side, the engine on the other.

One thread runs the loop: read jobs up to the free slots, admit them into the engine between decode steps, and
after each engine step publish one event per running job in one pipelined round trip. PUBLISH returning 0 means
the client left, and that job's sequences are cancelled at once. A second thread heartbeats (workers/heartbeat.py),
so a long prefill never makes a live worker look dead. This module knows nothing of torch: the engine is behind its
interface, and jobs answered at admission (token counts, an embeddings worker's vectors) go to the backend of their
kind (workers/backends.py).

This is the I/O half: it reads, admits, polls, publishes and acknowledges. What those come to is decided without
Redis, the engine or a clock: which read entries are settled at once and which start (workers/triage.py), a
generation job's sequences and its share of the engine (workers/generation.py), what a job's events are
(workers/relay.py), and the one count of outcomes behind the heartbeat's totals, the stats hashes
and the metrics (workers/outcomes.py). Errors are the exceptions of broker/errors.py, sent as ``error`` events by
``broker.schemas.error_event``. Events and acknowledgements go out through the outbox (workers/outbox.py), which
keeps them through a broker outage and fences each job's events by its stream entry.

Every event also goes to the job's log (broker/eventlog.py). A job taken over from a dead (or stopped) worker is
continued from that log: its prompt plus the tokens already sent, the same sampling parameters, the remaining
``max_tokens``, ``seq`` going on where it stopped, so its client sees neither an error nor repeated text. A job
nobody listens to any more is cancelled at once when its front server says its client hung up, and after
``orphan_grace`` seconds otherwise (its front server died: the client may resume the stream elsewhere).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from broker.consumer import Delivery, JobConsumer, Malformed
from broker.errors import JobCancelled, JobTimedOut, QueuechatError
from broker.eventlog import NOT_OWNER, JobLog
from broker.registry import WEDGED, WorkerRegistration, WorkerStatus
from broker.schemas import error_event
from workers.admission import AnyEvent, engine_failure
from workers.backends import Backends, Tokens, answered
from workers.engine import EngineDead, SeqUpdate
from workers.generation import Generation
from workers.heartbeat import Heartbeat
from workers.metrics import WorkerMetrics
from workers.outbox import Outbox
from workers.outcomes import Outcomes, outcome_of
from workers.pacing import StreamInterval, TokenRate
from workers.parsing import OutputParsers
from workers.progress import EngineProgress
from workers.prompts import longest_token_chars
from workers.relay import accepted, choice_done, choice_end, is_late, step
from workers.running import RunningJob, seq_id, split_seq_id
from workers.token_text import TokenLogprobs
from workers.tracing import record_job
from workers.triage import orphans_to_cancel, triage, unheard

log = logging.getLogger(__name__)


class ModelWorker:
    def __init__(
        self,
        backends: Backends,
        tokenizer: Any,
        consumer: JobConsumer,
        registration: WorkerRegistration,
        *,
        heartbeat_interval: float = 2.0,
        heartbeat_ttl: float = 6.0,
        chat_template: str | None = None,
        drain_timeout: float = 30.0,
        stream_interval: int = 1,
        orphan_grace: float = 10.0,
        max_tokens_cap: int | None = None,
        stall_timeout: float = 30.0,
        stall_factor: float = 10.0,
        on_wedged: Callable[[], None] | None = None,
        parsers: OutputParsers | None = None,
    ) -> None:
        self.engine = backends.engine  # None: a worker that generates nothing (an embeddings worker)
        self.slots = backends.slots
        self.tokenizer = tokenizer
        self.consumer = consumer
        self.registration = registration
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.chat_template = chat_template
        self.parsers = parsers or OutputParsers()
        self.drain_timeout = drain_timeout
        self.stream_interval = StreamInterval(stream_interval)
        self.orphan_grace = orphan_grace
        self.max_tokens_cap = max_tokens_cap
        self._orphaned: dict[str, float] = {}  # job id -> since when no front server listens to it
        # events and acknowledgements a broker outage kept from Redis, sent first once it is back
        self.outbox = Outbox(consumer)
        self.vocab_size = len(tokenizer)
        # A prompt longer than this cannot fit the context: refused before it is tokenised (see longest_token_chars)
        context = backends.max_model_len
        self.max_prompt_chars = context * longest_token_chars(tokenizer) or None
        # what serves each job kind: every worker counts tokens with its tokenizer
        self.backends = backends.with_answerer(
            Tokens(tokenizer, chat_template, self.vocab_size, self.max_prompt_chars, context)
        )
        self.jobs: dict[str, RunningJob] = {}
        self._logprobs = TokenLogprobs(tokenizer)
        # the jobs that run in the engine, where this worker has one
        self.generation = (
            Generation(
                self.engine,
                tokenizer,
                chat_template=chat_template,
                parsers=self.parsers,
                vocab_size=self.vocab_size,
                max_prompt_chars=self.max_prompt_chars,
                max_tokens_cap=max_tokens_cap,
                logprobs=self._logprobs,
                restart_log=consumer.restart_log,
            )
            if self.engine is not None
            else None
        )
        self._ended: OrderedDict[str, RunningJob] = OrderedDict()  # recently ended, to recognise late outputs
        self.stopping = threading.Event()
        self.outcomes = Outcomes()
        self.totals = self.outcomes.totals  # for the heartbeat: what this worker did since it started
        self.metrics: WorkerMetrics | None = None  # set when the worker serves --metrics-port
        self.token_rate = TokenRate()
        # Reclaiming waits until this worker has seen the broker healthy for a whole heartbeat TTL: right after an
        # outage every heartbeat key may have expired, and live workers need that long to renew theirs.
        self._broker_ok_since = time.monotonic()
        self._next_reclaim = 0.0
        # the heartbeat thread, and liveness by progress (workers/heartbeat.py): a wedged worker hands its jobs over
        # (and so does one whose engine failed for good: see Heartbeat.engine_failed)
        self.progress = EngineProgress(stall_timeout, stall_factor)
        self.heartbeat = Heartbeat(
            registration,
            consumer,
            self.progress,
            status=self.status,
            running=lambda: len(self.jobs),
            stopping=self.stopping,
            interval=heartbeat_interval,
            ttl=heartbeat_ttl,
            on_wedged=on_wedged,
            engine_failure=lambda: getattr(self.engine, "failure", None),
        )
        self.wedged = self.heartbeat.wedged

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Serve until :meth:`stop` is called; then drain running work and deregister."""
        self.consumer.ensure_groups()
        self.heartbeat.beat()
        self.heartbeat.start()
        log.info("worker %s serving %s", self.consumer.consumer, ", ".join(self.consumer.models))
        backoff = 0.05
        try:
            while not self.stopping.is_set() and not self.wedged.is_set():
                try:
                    self._step()
                    backoff = 0.05
                except RedisError as exc:
                    log.warning("broker unreachable (%s); retrying in %.2fs", exc, backoff)
                    self._broker_ok_since = math.inf
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            if self.wedged.is_set():
                # No drain (the engine is stuck) and no deregistering: the heartbeat goes on saying "wedged" so
                # that live workers take the jobs over, counting a death against each (the job may be the cause).
                self.heartbeat.handed_over.wait()
                return
            self._drain()
        finally:
            self.heartbeat.stopped.set()
            if not self.wedged.is_set():
                try:
                    self.registration.deregister()
                except RedisError:
                    log.warning("could not deregister; the heartbeat key will expire by itself")

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        """Release the backends (once :meth:`run` has returned)."""
        if self.engine is not None:
            self.engine.close()

    @property
    def _generation(self) -> Generation:
        """The engine's side, which only the jobs that run in it reach (see :meth:`Backends.answerer`)."""
        if self.generation is None:
            raise RuntimeError("this worker has no generation engine")
        return self.generation

    def _drain(self) -> None:
        """Stop intake, let running sequences finish within the drain timeout, then leave the rest pending so a
        live worker reclaims them."""
        deadline = time.monotonic() + self.drain_timeout
        while self.jobs and time.monotonic() < deadline:
            try:
                self._relay(self._poll())
            except RedisError:
                time.sleep(0.1)
        for running in list(self.jobs.values()):
            for index in range(len(running.choices)):
                self._generation.cancel(seq_id(running.job.id, index))
        if self.jobs:
            log.warning("handing back %d unfinished jobs", len(self.jobs))
        self.jobs.clear()

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        if self.heartbeat.engine_failed():
            return
        if self._broker_ok_since == math.inf:
            self.consumer.ensure_groups()  # Redis may have come back empty
            self._broker_ok_since = time.monotonic()
        free = self.slots - len(self.jobs)
        due = self._reclaim_due()
        if free > 0 and due:
            reclaimed = self.consumer.reclaim(free)
            if reclaimed.deliveries:
                self._admit(reclaimed.deliveries, reclaimed=True)
            free = self.slots - len(self.jobs)
            # entries pending to this worker that it does not run: a delivery whose reply it never read (a lost
            # XREADGROUP reply), or a finished job whose acknowledgement an AOF restart lost; each is read with its
            # log, so a finished one is acknowledged and the others continued
            if free > 0 and (strays := self.consumer.strays(self._held_entries(), free)):
                self._admit(strays, recounted=False)  # a finished one was counted when it ended
            free = self.slots - len(self.jobs)
        if free > 0:
            # Idle: block in Redis so a new job starts at once. Busy: just look, the engine is waiting.
            block_ms = None if self.jobs else 500
            items = self.consumer.read(free, block_ms)
            if items:
                self._admit(items)
        if not self.jobs:
            self.progress.idle()
        if self.jobs:
            self._expire_overdue()
            self._relay(self._poll())

    def _poll(self) -> list[SeqUpdate]:
        """The engine's output since the last poll; any output is a step of progress."""
        self.progress.poll_started()
        updates: list[SeqUpdate] = []
        try:
            updates = self._generation.poll(timeout=0.05)
        finally:
            self.progress.poll_ended(bool(updates))
        return updates

    def _held_entries(self) -> set[tuple[str, str]]:
        """The stream entries this worker runs or has yet to acknowledge."""
        held = [r.delivery for r in self.jobs.values()] + self.outbox.unacked
        return {(item.stream, item.entry_id) for item in held}

    def _reclaim_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_reclaim or now - self._broker_ok_since < self.heartbeat_ttl:
            return False
        self._next_reclaim = now + self.heartbeat_interval
        return True

    def _expire_overdue(self) -> None:
        """End running jobs whose deadline passed: their front server has given up on them already. On Redis's
        clock, so that a worker whose clock runs ahead does not end jobs early, nor one behind too late."""
        now = self.consumer.redis_now()
        overdue = [r for r in self.jobs.values() if r.deadline < now]
        if not overdue:
            return
        events: list[tuple[str, AnyEvent]] = []
        for running in overdue:
            self._cancel_all(running)
            running.expired = True
            failure = JobTimedOut("the request passed its deadline while it was running")
            events.append((running.job.id, error_event(failure, running.next_seq())))
        self._publish(events, {r.job.id for r in overdue})
        self._finish(set())

    def _admit(self, items: list[Delivery | Malformed], *, reclaimed: bool = False, recounted: bool = True) -> None:
        deliveries = [i for i in items if isinstance(i, Delivery)]
        # A job nobody listens to is skipped if its front server marked its client gone. Unmarked, its front server
        # may only be re-subscribing (a Redis failover loses every subscription), so it is started, and cancelled
        # after orphan_grace if still nobody listens (see _to_cancel).
        silent = unheard(deliveries, self.consumer.subscribers(d.job.id for d in deliveries))
        skipped = set(silent)
        if silent and self.orphan_grace > 0 and self.consumer.event_log:
            skipped = self.consumer.cancelled(silent)
        taken_over = [d.job.id for d in deliveries if d.job.attempt > 1]
        pasts = self.consumer.read_logs(taken_over) if self.consumer.event_log else {}
        sorted_out = triage(
            items,
            skipped=skipped,
            pasts=pasts,
            now=self.consumer.redis_now(),
            model_of=self.consumer.model_of,
            outcomes=self.outcomes,
            recounted=recounted,
        )
        events, ended, finished = sorted_out.events, sorted_out.ended, sorted_out.finished
        for start in sorted_out.to_start:
            delivery, job = start.delivery, start.delivery.job
            try:
                answerer = self.backends.answerer(job)  # InvalidRequest when no backend of this worker serves it
                if answerer is not None:
                    events.extend((job.id, e) for e in answered(job, answerer, self.consumer.consumer))
                    ended.add(job.id)
                    finished.append(delivery)
                    self.outcomes.count(job.model, "completed")
                    continue
                running = self._start(delivery, start.past)
            except EngineDead:  # not the job's fault: left pending to this worker, it is handed over with the rest
                self.heartbeat.engine_failed()
                continue
            except QueuechatError as exc:  # a job this worker cannot run as asked (a bad prompt or parameter)
                self.outcomes.count(job.model, "failed")
                sorted_out.fail(delivery, job.id, error_event(exc, start.first_seq))
                continue
            except Exception as exc:  # one bad job never takes the worker down
                log.exception("job %s could not start", job.id)
                self.outcomes.count(job.model, "failed")
                sorted_out.fail(delivery, job.id, error_event(engine_failure(exc), start.first_seq))
                continue
            self.jobs[job.id] = running
            if reclaimed:
                self.outcomes.count(job.model, "reclaimed")
            if running.continued:
                self.outcomes.count(job.model, "continued")
            events.append((job.id, accepted(running, self.consumer.consumer, self.parsers)))
            for index in running.ended_at_admission:
                events.extend((job.id, e) for e in choice_end(running, index))
        owned: dict[str, Delivery | Malformed] = {
            item.job_id: item for item in items if isinstance(item, Malformed) and item.job_id
        }
        owned.update((d.job.id, d) for d in deliveries)
        events, receivers = self._publish(events, ended, owned)
        taken = {job_id for (job_id, _), n in zip(events, receivers, strict=True) if n == NOT_OWNER}
        if taken:  # another worker holds these entries now: never acknowledge them for it
            finished = [f for f in finished if (f.job.id if isinstance(f, Delivery) else f.job_id) not in taken]
        self._ack(finished)
        if any(r.ended_at_admission for r in self.jobs.values()):
            self._finish(set())

    def _start(self, delivery: Delivery, past: JobLog | None = None) -> RunningJob:
        """Put a job's sequences into the engine (see :meth:`Generation.start`)."""
        return self._generation.start(delivery, past)

    def _started(self, sid: str) -> bool:
        job_id, index = split_seq_id(sid)
        running = self.jobs.get(job_id)
        return running is not None and running.choices[index].tokens > 0

    def _relay(self, updates: list[SeqUpdate]) -> None:
        updates = self.stream_interval.ready(updates, self._started)
        if not updates and not self.outbox.has_unsent:
            return
        events: list[tuple[str, AnyEvent]] = []
        now = time.time()
        for update in updates:
            job_id, index = split_seq_id(update.seq_id)
            running = self.jobs.get(job_id) or self._ended.get(job_id)
            if running is None or is_late(running, index):
                if running is not None:
                    self.outcomes.late(running.job.model, len(update.token_ids))
                continue
            result = step(running, index, update, self._logprobs, now)
            events.extend((job_id, e) for e in result.events)
            if result.failed:
                self._cancel_all(running)
                continue
            if result.stop:
                self._generation.cancel(update.seq_id)
            if result.finished:
                try:
                    self._generation.choice_left(job_id, index, self.jobs.get(job_id))
                except EngineDead:  # the job is handed over with the rest (see Heartbeat.engine_failed)
                    self.heartbeat.engine_failed()
                except Exception as exc:  # a waiting choice the engine refused fails its job, never the worker
                    log.exception("job %s: a waiting choice could not start", job_id)
                    events.append((job_id, error_event(engine_failure(exc), running.next_seq())))
                    self._cancel_all(running)
                    running.failed = True
                events.append((job_id, choice_done(running, index)))
        self.token_rate.add(sum(len(u.token_ids) for u in updates), now)
        ended = {job_id for job_id, _ in events if job_id in self.jobs and self.jobs[job_id].finished}
        events, receivers = self._publish(events, ended)
        heard = {job_id for (job_id, _), n in zip(events, receivers, strict=True) if n > 0}
        fenced = {job_id for (job_id, _), n in zip(events, receivers, strict=True) if n == NOT_OWNER}
        gone = {job_id for job_id, _ in events} - heard - fenced
        for job_id in heard:
            self._orphaned.pop(job_id, None)
        self._finish(self._to_cancel(gone))

    def _publish(
        self,
        events: list[tuple[str, AnyEvent]],
        ended: set[str],
        owned: dict[str, Delivery | Malformed] | None = None,
    ) -> tuple[list[tuple[str, AnyEvent]], list[int]]:
        """Publish events through the outbox (after any an outage held back, see workers/outbox.py), each job's
        only while its stream entry is still this worker's (``owned``, else the running or just ended job's
        delivery): a job another worker took over while this one was stalled or cut off gets nothing more from
        here, and is dropped (see :meth:`_fence`)."""
        events, receivers = self.outbox.publish(events, ended, owned, self._delivery_of)
        self._fence({job_id for (job_id, _), n in zip(events, receivers, strict=True) if n == NOT_OWNER})
        return events, receivers

    def _delivery_of(self, job_id: str) -> Delivery | None:
        running = self.jobs.get(job_id) or self._ended.get(job_id)
        return running.delivery if running is not None else None

    def _fence(self, taken: set[str]) -> None:
        """Stop running jobs whose stream entries another worker holds now (it took them over while this one did
        not heartbeat): their sequences are cancelled, and they are neither published nor acknowledged here."""
        for job_id in taken:
            running = self.jobs.pop(job_id, None)
            self._orphaned.pop(job_id, None)
            if running is None:
                continue
            self._cancel_all(running)
            self._ended[job_id] = running
            log.warning("job %s was taken over by another worker; fenced: this worker stops it", job_id)

    def _ack(self, items: list[Delivery | Malformed]) -> None:
        """Acknowledge finished entries through the outbox (with those an outage held back, see
        workers/outbox.py). What was counted since the last acknowledgement goes into the stats hashes with it,
        and into the metrics."""
        counters = self.outcomes.take()
        if self.metrics is not None:
            self.metrics.count(counters)
        self.outbox.ack(items, counters)

    def _to_cancel(self, unheard: set[str]) -> set[str]:
        """Of the running jobs nobody heard this step, those to cancel: the ones whose client hung up (its front
        server marked them), and the ones nobody has listened to for ``orphan_grace`` seconds (their front server
        died; until then the client may resume the stream on another one)."""
        unheard = {j for j in unheard if j in self.jobs and not self.jobs[j].finished}
        if not unheard:
            return set()
        if self.orphan_grace <= 0 or not self.consumer.event_log:
            return unheard
        now = time.monotonic()
        for job_id in unheard:
            self._orphaned.setdefault(job_id, now)
        marked = self.consumer.cancelled(sorted(unheard))
        return orphans_to_cancel(unheard, marked, self._orphaned, now, self.orphan_grace)

    def _finish(self, gone: set[str]) -> None:
        finished: list[Delivery | Malformed] = []
        notices: list[tuple[str, AnyEvent]] = []
        for job_id in list(self.jobs):
            running = self.jobs[job_id]
            outcome = outcome_of(running, gone=job_id in gone)
            if outcome is None:
                continue
            if outcome == "cancelled":
                self._cancel_all(running)
                # for a client that comes back to resume it: the stream ends here
                message = "the job was cancelled: its client hung up, or nobody resumed its stream in time"
                notices.append((job_id, error_event(JobCancelled(message), running.next_seq())))
            del self.jobs[job_id]
            self._generation.forget(running)
            self._orphaned.pop(job_id, None)
            self._ended[job_id] = running
            while len(self._ended) > 256:
                self._ended.popitem(last=False)
            finished.append(running.delivery)
            self.outcomes.ended(running, outcome)
            log.info(
                "job %s request_id=%s model=%s %s wait=%.3fs ttft=%.3fs tokens=%d+%d duration=%.3fs",
                job_id,
                running.job.request_id or "-",
                running.job.model,
                outcome,
                running.started - running.job.created,
                (running.first_token_at or running.started) - running.job.created,
                running.prompt_tokens,
                running.completion_tokens,
                time.time() - running.started,
            )
            record_job(running, outcome, self.consumer.consumer)
        self.outbox.hold_acks(finished)  # acknowledged below, or at the next try should the broker fail meanwhile
        if notices:  # before the acknowledgement: a job's events go out only while its entry is pending here
            self._publish(notices, {j for j, _ in notices})
        self._ack([])

    def _cancel_all(self, running: RunningJob) -> None:
        for index in range(len(running.choices)):
            self.stream_interval.drop(seq_id(running.job.id, index))
        self._generation.cancel_all(running)  # its waiting choices never start either

    # ------------------------------------------------------------------ heartbeat

    def status(self) -> WorkerStatus:
        running = len(self.jobs)
        state = "draining" if self.stopping.is_set() else ("busy" if running else "idle")
        if self.wedged.is_set():
            state = WEDGED
        return WorkerStatus(
            state=state,
            running=running,
            free_slots=max(self.slots - running, 0),
            tokens_per_s=round(self.token_rate.per_second(), 2),
            completed=self.totals["completed"],
            failed=self.totals["failed"],
            holding=[r.delivery.entry_id for r in list(self.jobs.values())],
        )
