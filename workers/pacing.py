"""How often a worker publishes: ``--stream-interval N`` holds a sequence's tokens back until N have gathered, and
a sliding window counts the tokens made for the heartbeat's tokens/s."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from workers.engine import SeqUpdate
from workers.running import merge_updates


class StreamInterval:
    """``--stream-interval N``: each event carries N tokens of a sequence (fewer messages to publish, parse and
    send). A sequence's first tokens, its end and its errors always go at once."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self._held: dict[str, SeqUpdate] = {}  # seq id -> tokens waiting

    def ready(self, updates: list[SeqUpdate], started: Callable[[str], bool]) -> list[SeqUpdate]:
        """The updates to publish now; ``started(seq_id)`` says whether the sequence has sent any token yet."""
        if self.every <= 1:
            return updates
        ready = []
        for update in updates:
            held = self._held.pop(update.seq_id, None)
            if held is not None:
                update = merge_updates(held, update)
            if not started(update.seq_id) or update.finished or update.error or len(update.token_ids) >= self.every:
                ready.append(update)
            else:
                self._held[update.seq_id] = update
        return ready

    def drop(self, seq_id: str) -> None:
        self._held.pop(seq_id, None)


class TokenRate:
    """Tokens made over the last ``window`` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._counts: deque[tuple[float, int]] = deque()

    def add(self, n: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._counts.append((now, n))
        while self._counts and self._counts[0][0] < now - self.window:
            self._counts.popleft()

    def per_second(self) -> float:
        since = time.time() - self.window
        return sum(n for t, n in list(self._counts) if t >= since) / self.window
