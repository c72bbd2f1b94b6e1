"""The worker's heartbeat: a second thread that renews its registration (its state, free slots, totals and the
entries it holds) and its view of Redis's clock every ``interval``, so that a long prefill never makes a live
worker look dead.

It also judges liveness by progress (workers/progress.py), on this thread because a stuck engine can hold up the
consume loop but not this one: a worker whose engine stopped producing output while it runs sequences says so in
its heartbeat (state "wedged"), stops taking work, waits (a bounded time) for live workers to take its jobs over,
then ``on_wedged`` ends the process so that its supervisor restarts it.

An engine that failed for good (its ``failure``, see workers/engine.py) is handled the same way: its jobs were not
at fault so much as they may be the cause, like a wedged engine's (a death is counted against each), and a fresh
process is a surer start than rebuilding an engine in one whose device state broke.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from broker.consumer import JobConsumer
from broker.registry import WorkerRegistration, WorkerStatus
from workers.progress import EngineProgress

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        registration: WorkerRegistration,
        consumer: JobConsumer,
        progress: EngineProgress,
        *,
        status: Callable[[], WorkerStatus],
        running: Callable[[], int],
        stopping: threading.Event,
        interval: float,
        ttl: float,
        on_wedged: Callable[[], None] | None = None,
        engine_failure: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.registration = registration
        self.consumer = consumer
        self.progress = progress
        self.status = status  # what the heartbeat says: the worker's state now
        self.running = running  # how many jobs the worker runs
        self.stopping = stopping  # set: the worker drains, and the heartbeat ends once nothing runs
        self.interval = interval
        self.ttl = ttl
        self.on_wedged = on_wedged
        self.engine_failure = engine_failure  # why the engine failed for good, or None while it works
        self.wedged = threading.Event()
        self.handed_over = threading.Event()  # a wedged worker's jobs went to live workers, or it waited long enough
        self.stopped = threading.Event()  # set by the consume loop once it has returned
        self._wedged_at = math.inf

    def beat(self) -> None:
        self.registration.heartbeat(self.status())
        self.consumer.sync_clock()

    def start(self) -> None:
        threading.Thread(target=self._forever, name="queuechat-heartbeat", daemon=True).start()

    def _forever(self) -> None:
        while not self.stopped.wait(self.interval):
            if self.stopping.is_set() and not self.running():
                return
            self._check_progress()
            try:
                self.beat()
            except RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            if self.wedged.is_set() and self._wedged_done():
                break
        if self.wedged.is_set():
            self.handed_over.set()
            if self.on_wedged is not None:
                self.on_wedged()  # here, not in the consume loop: that loop may be stuck in the engine itself

    def engine_failed(self) -> bool:
        """Whether the engine failed for good; the first time, the worker declares itself wedged: it stops taking
        work and hands its jobs over as a wedged worker does."""
        failure = self.engine_failure()
        if failure is None:
            return False
        if not self.wedged.is_set():
            self._wedged_at = time.monotonic()
            log.error("the engine failed (%s) running %d jobs; handing them over and exiting", failure, self.running())
            self.wedged.set()
        return True

    def _check_progress(self) -> None:
        """Declare the worker wedged when its engine has run sequences without output for too long, or failed."""
        if self.wedged.is_set() or self.stopping.is_set() or self.engine_failed() or not self.progress.wedged():
            return
        self._wedged_at = time.monotonic()
        log.error(
            "the engine produced nothing for %.1fs while running %d jobs (limit %.1fs: max(%.0fs, %g x the slowest "
            "step, %.2fs)); wedged: handing its jobs over and exiting",
            self.progress.stalled_for(),
            self.running(),
            self.progress.limit,
            self.progress.floor,
            self.progress.factor,
            self.progress.slowest,
        )
        self.wedged.set()

    def _wedged_done(self) -> bool:
        """Whether a wedged worker may exit: live workers took its jobs, or it gave them long enough (with no live
        worker they wait in Redis for the next one, the restarted process included)."""
        if time.monotonic() - self._wedged_at > 3 * self.ttl:
            return True
        try:
            return self.consumer.holding() == 0
        except RedisError:
            return False
