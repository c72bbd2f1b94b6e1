"""What a worker makes of the entries it read before any reaches the engine (workers/triage.py), and the one count
of outcomes (workers/outcomes.py): decided from Delivery/Malformed objects and logs alone, no Redis, no model."""

from __future__ import annotations

from typing import Any

from broker.consumer import Malformed
from broker.schemas import Delta, Error
from tests.worker_parts import BUDGET, QUEUED_AT, delivery, done, log_of
from workers.outcomes import Outcomes
from workers.triage import Triage, orphans_to_cancel, triage, unheard

NOW = QUEUED_AT + 1  # well within every job's deadline


def sort_out(items: list[Any], outcomes: Outcomes, **options: Any) -> Triage:
    options = {"skipped": set(), "pasts": {}, "now": NOW, **options}
    return triage(items, model_of=lambda stream: stream.rsplit(":", 1)[-1], outcomes=outcomes, **options)


def test_a_job_to_run_is_to_start_with_no_event_yet() -> None:
    outcomes = Outcomes()
    out = sort_out([delivery("a")], outcomes)
    assert [s.delivery.job.id for s in out.to_start] == ["a"]
    assert (out.events, out.ended, out.finished) == ([], set(), [])
    assert outcomes.take() == {} and not outcomes.totals


def test_a_malformed_entry_fails_with_invalid_job_and_is_acknowledged() -> None:
    outcomes = Outcomes()
    bad = Malformed(stream="q:jobs:tiny", entry_id="1-0", reason="not JSON", job_id="x")
    anonymous = Malformed(stream="q:jobs:tiny", entry_id="2-0", reason="no job", job_id=None)
    out = sort_out([bad, anonymous], outcomes)
    assert out.events == [("x", Error(seq=0, code="invalid_job", message="not JSON", status=400))]
    assert out.ended == {"x"} and out.finished == [bad, anonymous] and not out.to_start
    assert outcomes.take() == {"tiny": {"failed": 2}}
    assert outcomes.totals["failed"] == 2  # refused here: this worker's own failures


def test_a_job_past_its_deadline_fails_with_timeout_at_the_seq_its_log_reached() -> None:
    outcomes = Outcomes()
    late = delivery("a", attempt=2)
    past = log_of(Delta(seq=0, index=0, text="hi", token_ids=[5]), Delta(seq=1, index=0, text="!", token_ids=[6]))
    out = sort_out([late], outcomes, pasts={"a": past}, now=QUEUED_AT + BUDGET + 1)
    assert out.events == [("a", Error(seq=2, code="timeout", message="the job's deadline passed", status=504))]
    assert out.finished == [late] and out.ended == {"a"}
    assert outcomes.take() == {"tiny": {"expired": 1}}
    assert not outcomes.totals  # settled, never served here


def test_a_job_whose_client_left_is_skipped_with_cancelled() -> None:
    outcomes = Outcomes()
    gone, kept = delivery("gone"), delivery("kept")
    assert unheard([gone, kept], [0, 2]) == ["gone"]
    out = sort_out([gone, kept], outcomes, skipped={"gone"})
    message = "no client was listening to the job when a worker took it"
    assert out.events == [("gone", Error(seq=0, code="cancelled", message=message, status=409))]
    assert [s.delivery for s in out.to_start] == [kept]
    assert outcomes.take() == {"tiny": {"cancelled": 1}}
    assert outcomes.totals["cancelled"] == 0  # the heartbeat's totals count jobs this worker served


def test_a_job_its_log_shows_ended_is_only_acknowledged() -> None:
    outcomes = Outcomes()
    answered, failed = delivery("a", attempt=2), delivery("b", attempt=2)
    pasts = {"a": log_of(done(seq=1)), "b": log_of(Error(seq=0, code="engine_error", message="x"))}
    out = sort_out([answered, failed], outcomes, pasts=pasts)
    assert out.finished == [answered, failed] and not out.events and not out.to_start
    assert outcomes.take() == {"tiny": {"completed": 1, "failed": 1}}
    # counted when it ended here already: not again
    out = sort_out([answered], outcomes, pasts=pasts, recounted=False)
    assert out.finished == [answered] and outcomes.take() == {}


def test_a_taken_over_job_starts_from_its_log() -> None:
    outcomes = Outcomes()
    item = delivery("a", n=2, attempt=2)
    past = log_of(done(seq=1, index=0), Delta(seq=2, index=1, text="x", token_ids=[7]))
    (start,) = sort_out([item], outcomes, pasts={"a": past}).to_start
    assert (start.past, start.first_seq) == (past, 3)
    # a log without its beginning is no place to go on from: the job's events start again at 0
    partial = log_of(Delta(seq=2, index=0, text="x", token_ids=[7]), whole=False)
    (start,) = sort_out([item], outcomes, pasts={"a": partial}).to_start
    assert start.first_seq == 0


def test_outcomes_are_taken_once() -> None:
    outcomes = Outcomes()
    outcomes.count("tiny", "completed")
    outcomes.late("tiny", 4)
    assert outcomes.take() == {"tiny": {"completed": 1, "output_tokens": 4, "tokens_after_cancel": 4}}
    assert outcomes.take() == {}
    assert outcomes.totals["completed"] == 1


def test_a_running_job_nobody_hears_is_cancelled_once_marked_or_after_the_grace() -> None:
    since = {"marked": 99.0, "fresh": 99.0, "old": 80.0}
    assert orphans_to_cancel(set(since), {"marked"}, since, now=100.0, grace=10.0) == {"marked", "old"}
