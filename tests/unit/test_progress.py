"""The wedge clock (workers/progress.py) on a clock the test moves: only time spent waiting on the engine while
sequences run counts, so a broker outage or a long admission between polls is never taken for a wedged engine; a
poll that never returns (a forward pass that blocks) is; the limit is max(floor, factor x the slowest step)."""

from __future__ import annotations

import pytest

import workers.progress
from workers.progress import EngineProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(workers.progress, "time", moved)  # the module's clock only, not the test process's
    return moved


def poll(progress: EngineProgress, clock: Clock, seconds: float, output: bool) -> None:
    progress.poll_started()
    clock.now += seconds
    progress.poll_ended(output)


def test_time_between_polls_is_not_waiting_on_the_engine(clock: Clock) -> None:
    progress = EngineProgress(floor=30, factor=10)
    poll(progress, clock, 0.05, output=True)
    clock.now += 600  # Redis is down, or a huge prompt is being tokenised: the engine is not being waited on
    poll(progress, clock, 0.05, output=False)
    assert progress.stalled_for() == pytest.approx(0.05)
    assert not progress.wedged()


def test_polls_without_output_add_up_to_a_wedge(clock: Clock) -> None:
    progress = EngineProgress(floor=30, factor=10)
    for _ in range(30):
        poll(progress, clock, 1.0, output=False)
        clock.now += 5  # the consume loop's own work between polls does not count
    assert not progress.wedged()  # 30 s of waiting: at the floor, not past it
    poll(progress, clock, 1.0, output=False)
    assert progress.wedged()


def test_a_poll_that_never_returns_is_a_wedge(clock: Clock) -> None:
    progress = EngineProgress(floor=30, factor=10)
    poll(progress, clock, 0.05, output=True)
    progress.poll_started()  # the forward pass blocks: the heartbeat thread sees the poll in progress
    clock.now += 31
    assert progress.wedged()


def test_the_limit_follows_the_slowest_step_and_idle_resets(clock: Clock) -> None:
    progress = EngineProgress(floor=30, factor=10)
    poll(progress, clock, 5.0, output=True)  # a slow step (a long prefill): the limit is 10 x 5 s
    assert progress.limit == pytest.approx(50)
    poll(progress, clock, 40.0, output=False)
    assert not progress.wedged()
    progress.idle()  # no sequence runs: nothing is owed
    assert progress.stalled_for() == 0
    poll(progress, clock, 51.0, output=False)
    assert progress.wedged()
    assert progress.steps == 1
