"""One submitted job's events, in order, for the front server that waits for them: duplicates dropped, gaps and
lost connections filled from the job's log (broker/eventlog.py), an outage of Redis waited out up to its grace, and
the job's worker checked while no event comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from broker import eventlog
from broker.errors import BrokerUnavailable, JobFailed, NoWorkerAvailable, RequestTimedOut
from broker.eventrouter import CONNECTION_LOST, RECONNECTED
from broker.keys import log_entry_id
from broker.schemas import Accepted, AnyEvent, Done, Error, Job, job_failure, parse_event

if TYPE_CHECKING:
    from broker.producer import Producer

log = logging.getLogger(__name__)


class JobEvents:
    """The events of one submitted job, in order. Iteration ends after ``done`` for every choice, or raises
    :class:`JobFailed` on an ``error`` event. Always :meth:`close` (or use ``async with``).

    Events arrive on the job's channel; an event seen twice (a catch-up overlapping the live channel) is dropped,
    and a gap in ``seq`` or a lost connection is filled from the job's log, so only a log that is gone fails the
    job (``events_lost``). While the connection to Redis is down the job waits up to ``outage_grace`` seconds.

    When the job's worker dies, another worker continues the job from the tokens already sent: its ``accepted``
    carries the next ``seq`` (and a higher attempt) and is passed over, and the stream goes on. A worker that
    cannot continue it (its log was lost) runs it again from the start: an ``accepted`` with ``seq`` 0, passed
    through (the caller drops what it gathered so far) unless the caller has marked the job :attr:`committed` (a
    stream that already sent text to its client): then it is a ``worker_lost`` error. While no event arrives the
    job's model is checked every ``watch_interval`` seconds, so a client learns of no worker left in seconds, or,
    when its model has a wait for a worker (``wait_for_worker``: scale from zero), once none started within it.
    """

    def __init__(self, producer: Producer, job: Job, queue: asyncio.Queue[bytes]) -> None:
        self.job = job
        self._producer = producer
        self._queue = queue
        self._next_seq = 0
        self._open_choices = job.params.n
        self._closed = False
        self._backlog: deque[AnyEvent] = deque()  # read from the log, to be taken before the channel
        self._catch_up = False  # the log must be read before the next event from the channel
        self._lost_at: float | None = None  # the event connection was lost then, and is not back yet
        self._failing_since: float | None = None  # commands to Redis have failed since then
        self.queued = False  # the job is in its stream (so it has a log)
        self.pending_first: AnyEvent | None = None  # the first event, once a front server has waited for it
        self.worker: str | None = None  # the worker running the job, from its ``accepted``
        self.attempt = 0
        self.continued = 0  # times another worker continued the job mid-stream
        self.caught_up = 0  # events read from the log because the channel missed them
        self.committed = False  # set by the caller once output has reached the client
        # Seconds the job may wait for a worker of its model to start while none is live (scale from zero), and
        # since when it has been waiting (monotonic; None while a worker is live).
        self.worker_wait = 0.0
        self.waiting_since: float | None = None

    async def __aenter__(self) -> JobEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[AnyEvent]:
        return self._iterate()

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last event taken (-1 before the first)."""
        return self._next_seq - 1

    def catch_up_from_start(self) -> None:
        """Read the whole log before anything else: for a front server attaching to a job it did not submit."""
        self.queued = True
        self._catch_up = True

    async def next_event(self) -> AnyEvent:
        """The next event; raises :class:`JobFailed` for an error event, :class:`RequestTimedOut` at the deadline,
        :class:`BrokerUnavailable` when the broker stayed unreachable past the outage grace."""
        while True:
            if self._backlog:
                event = self._take(self._backlog.popleft())
                if event is not None:
                    return event
                continue
            remaining = self.job.deadline - time.time()
            if remaining <= 0:
                raise RequestTimedOut(f"job {self.job.id} passed its deadline")
            if self._catch_up and self._lost_at is None:
                await self._read_log()
                continue
            if not self._queue.empty():  # under load the event is often there already: no timer to arm
                raw = self._queue.get_nowait()
            else:
                try:
                    wait = min(remaining, self._producer.settings.heartbeat_interval)
                    if self.waiting_since is not None:  # look again when the wait for a worker ends
                        wait = min(wait, max(self.waiting_since + self.worker_wait - time.monotonic(), 0.01))
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that arrives as
                    # the awaited get completes (an event per token makes that common), so a request whose client
                    # hung up went on to the end of its answer
                    async with asyncio.timeout(wait):
                        raw = await self._queue.get()
                except TimeoutError:
                    await self._check_worker()
                    continue
            event = self._arrived(raw)
            if event is not None:
                return event

    def _arrived(self, raw: bytes) -> AnyEvent | None:
        if raw == CONNECTION_LOST:
            self._outage()
            return None
        if raw == RECONNECTED:
            self._lost_at = None
            self._catch_up = True
            return None
        try:
            event = parse_event(raw)
        except ValueError as exc:  # a worker of another version, or a bug: fail this job, never the server
            raise JobFailed(
                f"job {self.job.id} got an event it cannot read: {exc}", status=502, code="bad_event"
            ) from exc
        if self._catch_up and not isinstance(event, Error):
            return None  # the log read next has it too, in order
        return self._take(event)

    def _outage(self) -> None:
        """The event connection is down: fine for up to ``outage_grace`` seconds."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        self._within_grace(self._lost_at)

    def _failing(self) -> None:
        """A command to Redis failed: fine for up to ``outage_grace`` seconds of failures in a row."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._within_grace(self._failing_since)

    def _within_grace(self, since: float) -> None:
        if time.monotonic() - since >= self._producer.settings.outage_grace:
            raise BrokerUnavailable(f"the connection to the broker was lost while job {self.job.id} was running")

    def _take(self, event: AnyEvent) -> AnyEvent | None:
        """Apply one event in ``seq`` order: the event to hand on, or None for one that is not (a duplicate, the
        ``accepted`` of a continuation, an event past a gap that the log fills)."""
        if isinstance(event, Error):  # ends the job whoever sent it (a dead-letter notice has no place in seq)
            raise job_failure(event)
        if isinstance(event, Accepted) and event.seq == 0 and self._next_seq > 0:
            if (event.worker, event.attempt) == (self.worker, self.attempt):
                return None  # the first accepted again
            self._restart(event)
            return event
        if event.seq < self._next_seq:
            return None  # seen already
        if event.seq > self._next_seq:
            self._catch_up = True  # missed some: the log has them
            return None
        self._next_seq += 1
        if isinstance(event, Accepted):
            if event.seq > 0:  # another worker continues the job where the last one stopped
                log.info("job %s continued by worker %s (attempt %d)", self.job.id, event.worker, event.attempt)
                self.worker, self.attempt = event.worker, event.attempt
                self.continued += 1
                return None
            self.worker, self.attempt = event.worker, event.attempt
        elif isinstance(event, Done):
            self._open_choices -= 1
        return event

    async def _read_log(self) -> None:
        """Put the events from ``_next_seq`` on, as the job's log has them, before anything from the channel."""
        producer = self._producer
        key = producer.keys.log(self.job.id)
        try:
            pipe = producer.client.pipeline(transaction=False)
            pipe.exists(key)
            pipe.xrange(key, min=log_entry_id(self._next_seq))
            exists, entries = await pipe.execute()
        except (RedisError, OSError):
            self._failing()
            await asyncio.sleep(0.2)
            return
        self._failing_since = None
        self._catch_up = False
        read = eventlog.parse_entries(entries)
        if not exists:
            if self._next_seq == 0 and not self.queued:
                return  # nothing sent yet (a reconnect while the job was being submitted)
            raise self._events_lost()
        ordered = [e for e in read.events if not isinstance(e, Error)]
        if ordered and ordered[0].seq != self._next_seq:
            raise self._events_lost()
        self.caught_up += len(read.events)
        self._backlog.extend(read.events)

    def _events_lost(self) -> JobFailed:
        return JobFailed(
            f"events of job {self.job.id} were lost (the broker lost the job's event log); retry the request",
            status=503,
            code="events_lost",
        )

    def _restart(self, event: Accepted) -> None:
        if self.committed:
            raise self._worker_lost()
        log.warning("job %s restarted on worker %s (attempt %d)", self.job.id, event.worker, event.attempt)
        self._next_seq = 1
        self._open_choices = self.job.params.n
        self.worker, self.attempt = event.worker, event.attempt

    def _worker_lost(self) -> JobFailed:
        return JobFailed(
            f"the worker running job {self.job.id} was lost after part of the answer had been sent, and the job "
            "could not be continued; retry the request",
            status=503,
            code="worker_lost",
        )

    async def _check_worker(self) -> None:
        """Called when no event came for a while: fail now if the job can no longer finish."""
        if self._lost_at is not None:
            self._outage()
            return
        producer = self._producer
        try:
            if self.worker is not None and await producer.client.exists(producer.keys.heartbeat(self.worker)):
                return
            live = await producer.live_models_cached(self.job.model)
        except (RedisError, OSError) as exc:
            if producer.settings.outage_grace <= 0:
                raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
            self._failing()
            return
        self._failing_since = None
        if self.job.model in live:
            # A live worker will take the job over (or start it, if it is still queued): keep waiting.
            self.waiting_since = None
            return
        if self.worker_wait <= 0:
            raise NoWorkerAvailable(f"no worker is serving model {self.job.model!r} any more")
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since >= self.worker_wait:
            raise self._no_worker_started()

    def _no_worker_started(self) -> NoWorkerAvailable:
        """The wait for a worker is over: the job stays in its stream, marked so that a worker arriving later
        skips it instead of running it for nobody."""
        self._producer.mark_cancelled(self.job.id, self.job.deadline, at_once=True)
        return NoWorkerAvailable(
            f"no worker of model {self.job.model!r} started within {self.worker_wait:g} s (the wait for a worker, "
            "QUEUECHAT_WAIT_FOR_WORKER); retry later"
        )

    @property
    def finished(self) -> bool:
        return self._open_choices <= 0

    async def _iterate(self) -> AsyncIterator[AnyEvent]:
        while not self.finished:
            yield await self.next_event()

    def close(self) -> None:
        """Stop listening. Synchronous, so it is safe in a ``finally`` of a cancelled request. A job left before
        its end is marked cancelled, so its worker stops it at once (not only after the orphan grace)."""
        if not self._closed:
            self._closed = True
            self._producer.router.unsubscribe(self._producer.keys.events(self.job.id))
            if self.queued and not self.finished:
                self._producer.mark_cancelled(self.job.id, self.job.deadline)
