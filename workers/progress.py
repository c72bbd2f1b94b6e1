"""Whether a worker's engine makes progress: a live process whose forward pass blocks (a stuck kernel, a deadlock)
still heartbeats, so liveness alone would keep its jobs from the healthy workers beside it.

While sequences run, the engine must keep producing output (tokens, an end, an error). The consume loop reports
how long each poll of the engine waited and whether it brought output; a *step* is the waiting until output came
(a prefill chunk that yields no token is part of the next one). Only time spent waiting on the engine counts, so a
broker outage or a long admission (tokenising a huge prompt) is never taken for a wedge. The heartbeat thread asks
whether the current wait has outlived the limit, ``max(floor, factor x the slowest step seen)``: the floor covers a
cold engine's first steps, the factor a model whose steps are slow on their own (a long prefill, a large batch on
CPU).
"""

from __future__ import annotations

import threading
import time


class EngineProgress:
    def __init__(self, floor: float, factor: float) -> None:
        self.floor = floor
        self.factor = factor
        self.steps = 0
        self.slowest = 0.0
        self._waited = 0.0  # waited on the engine since its last output, polls in progress excluded
        self._polling_since: float | None = None
        self._lock = threading.Lock()

    def idle(self) -> None:
        """No sequence runs: nothing is owed."""
        with self._lock:
            self._waited = 0.0

    def poll_started(self) -> None:
        with self._lock:
            self._polling_since = time.monotonic()

    def poll_ended(self, output: bool) -> None:
        """A poll of the engine returned, with output or without."""
        now = time.monotonic()
        with self._lock:
            if self._polling_since is not None:
                self._waited += now - self._polling_since
            self._polling_since = None
            if output:
                self.slowest = max(self.slowest, self._waited)
                self.steps += 1
                self._waited = 0.0

    @property
    def limit(self) -> float:
        return max(self.floor, self.factor * self.slowest)

    def stalled_for(self) -> float:
        """Seconds spent waiting on the engine without output while sequences run (a poll in progress counts)."""
        with self._lock:
            polling = 0.0 if self._polling_since is None else time.monotonic() - self._polling_since
            return self._waited + polling

    def wedged(self) -> bool:
        return self.stalled_for() > self.limit
