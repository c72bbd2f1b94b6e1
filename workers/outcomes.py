"""A worker's one count of what became of its jobs (completed, cancelled, failed, expired, reclaimed, continued)
and of their tokens. The consume loop takes what was counted since its last acknowledgement for the model's stats
hash (written with that acknowledgement) and for Prometheus; the heartbeat reports the running totals.

A job this worker only settled, without serving it (skipped because its client had left, expired while queued,
found finished in its log), counts in the stats and metrics but not in the totals, which tell what this worker did.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from workers.running import RunningJob


def outcome_of(running: RunningJob, gone: bool = False) -> str | None:
    """What a running job comes to now: None while it runs on, "cancelled" when nobody listens to it any more
    (``gone``) before its end, else how it ended."""
    if running.finished:
        return "expired" if running.expired else "failed" if running.failed else "completed"
    return "cancelled" if gone else None


class Outcomes:
    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._pending: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def count(self, model: str, name: str, n: int = 1, *, served: bool = True) -> None:
        """``n`` more of ``name`` for ``model``; ``served=False`` for a job settled here without being served."""
        if not n:
            return
        self._pending[model][name] += n
        if served:
            self.totals[name] += n

    def ended(self, running: RunningJob, outcome: str) -> None:
        """A running job ended: its outcome and its tokens."""
        model = running.job.model
        self.count(model, outcome)
        self.count(model, "prompt_tokens", running.prompt_tokens)
        self.count(model, "output_tokens", running.completion_tokens)

    def late(self, model: str, tokens: int) -> None:
        """Tokens computed before a cancel took effect: wasted work, counted so operators (and tests) see it."""
        self.count(model, "output_tokens", tokens)
        self.count(model, "tokens_after_cancel", tokens)

    def take(self) -> dict[str, Counter[str]]:
        """What was counted since the last call, by model ({model: {field: n}}, as the stats hashes hold it)."""
        taken, self._pending = dict(self._pending), defaultdict(Counter)
        return taken
