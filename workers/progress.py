"""Whether a worker's engine makes progress: a live process whose forward pass blocks (a stuck kernel, a deadlock)
still heartbeats, so liveness alone would keep its jobs from the healthy workers beside it.

While sequences run, the engine must keep producing output (tokens, an end, an error). The consume loop reports
each poll that brought output (a *step*, as the loop sees it: a prefill chunk that yields no token is part of the
next one) and whether it holds running sequences; the heartbeat thread asks whether the current gap has outlived
the limit, ``max(floor, factor x the slowest step seen)``: the floor covers a cold engine's first steps, the factor
a model whose steps are slow on their own (a long prompt's prefill, a large batch on CPU).
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
        self._since: float | None = None  # last output while busy, or when work began; None while idle
        self._lock = threading.Lock()

    def working(self, busy: bool, now: float | None = None) -> None:
        """Whether sequences are running now; the clock starts when work begins and stops while idle."""
        with self._lock:
            if not busy:
                self._since = None
            elif self._since is None:
                self._since = time.monotonic() if now is None else now

    def stepped(self, now: float | None = None) -> None:
        """The engine produced output."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._since is not None:
                self.slowest = max(self.slowest, now - self._since)
            self.steps += 1
            self._since = now

    @property
    def limit(self) -> float:
        return max(self.floor, self.factor * self.slowest)

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the engine has run sequences without output (0 while idle)."""
        with self._lock:
            since = self._since
        return 0.0 if since is None else (time.monotonic() if now is None else now) - since

    def wedged(self, now: float | None = None) -> bool:
        return self.stalled_for(now) > self.limit
