"""What a running job's events are (workers/relay.py): engine updates of its choices in, events out, with no engine,
no Redis and no clock (the arrival time is passed in). A small real tokenizer turns the tokens into text."""

from __future__ import annotations

from typing import Any

import pytest

from broker.schemas import Accepted, Delta, Done, Error, FinishReason, JobKind
from tests.worker_parts import QUEUED_AT, delivery, done, log_of, running, tokenizer
from workers.admission import continued_requests, generation_requests
from workers.engine import SamplingDefaults, SeqUpdate
from workers.outcomes import outcome_of
from workers.parsing import OutputParsers
from workers.relay import accepted, choice_done, choice_end, is_late, step
from workers.token_text import TokenLogprobs

ARRIVED = QUEUED_AT + 0.5


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer()


def test_tokens_become_a_delta_and_the_end_a_done(tok: Any) -> None:
    job = running(tok, delivery("a"))
    ids = tok.encode("Redis streams")
    first = step(job, 0, SeqUpdate("a/0", ids[:1], cached_tokens=2), TokenLogprobs(tok), ARRIVED)
    assert first.events == [Delta(seq=0, index=0, text=tok.decode(ids[:1]), token_ids=ids[:1])]
    assert not (first.finished or first.stop or first.failed)
    assert (job.first_token_at, job.cached_tokens, job.choices[0].tokens) == (ARRIVED, 2, 1)
    last = step(job, 0, SeqUpdate("a/0", ids[1:], finished=True), TokenLogprobs(tok), ARRIVED + 1)
    assert last.finished and [e.seq for e in last.events] == [1]
    assert job.first_token_at == ARRIVED  # the first token's time stays
    assert job.finished and outcome_of(job) == "completed"
    end = choice_done(job, 0)
    assert (end.seq, end.finish_reason, end.usage.completion_tokens) == (2, FinishReason.LENGTH, len(ids))


def test_a_stop_string_ends_the_choice_and_stops_its_sequence(tok: Any) -> None:
    job = running(tok, delivery("a"), stop=("STOP",))
    ids = tok.encode("workers read them. STOP here")
    result = step(job, 0, SeqUpdate("a/0", ids), TokenLogprobs(tok), ARRIVED)
    assert result.stop and result.finished  # the engine has not ended it: the loop cancels it
    (delta,) = result.events
    assert isinstance(delta, Delta) and delta.text == "workers read them. "
    end = choice_done(job, 0)
    assert (end.finish_reason, end.stop_reason) == (FinishReason.STOP, "STOP")


def test_an_end_token_ends_the_choice_with_stop(tok: Any) -> None:
    eos = tok.eos_token_id
    job = running(tok, delivery("a"), end_ids=(eos,))
    result = step(job, 0, SeqUpdate("a/0", [*tok.encode("jobs"), eos], finished=True), TokenLogprobs(tok), ARRIVED)
    assert result.finished and not result.stop
    assert choice_done(job, 0).finish_reason == FinishReason.STOP


def test_an_engine_error_fails_the_job_with_its_code(tok: Any) -> None:
    job = running(tok, delivery("a", n=2))
    result = step(job, 1, SeqUpdate("a/1", [], error="CUDA out of memory"), TokenLogprobs(tok), ARRIVED)
    assert result.failed
    (error,) = result.events
    assert isinstance(error, Error)
    assert (error.seq, error.code, error.status) == (0, "out_of_memory", 503)
    other = step(job, 0, SeqUpdate("a/0", [], error="boom"), TokenLogprobs(tok), ARRIVED)
    assert other.events == [Error(seq=1, code="engine_error", message="boom", status=500)]
    for choice in job.choices:  # what the loop does when it cancels the job's sequences
        choice.done = True
    assert outcome_of(job) == "failed"


def test_updates_of_an_ended_choice_are_late(tok: Any) -> None:
    job = running(tok, delivery("a", n=2))
    job.choices[0].done = True
    assert is_late(None, 0) and is_late(job, 0) and not is_late(job, 1)


def test_a_running_job_comes_to_one_outcome(tok: Any) -> None:
    job = running(tok, delivery("a"))
    assert outcome_of(job) is None
    assert outcome_of(job, gone=True) == "cancelled"
    job.expired = True
    job.choices[0].done = True
    assert outcome_of(job, gone=True) == "expired"  # it ended before anyone saw the client leave


def test_a_continued_choice_found_complete_ends_at_admission(tok: Any) -> None:
    job = running(tok, delivery("a", n=2, attempt=2))
    job.seq = 5
    job.choices[1].text.feed(tok.encode("Redis"))
    job.choices[1].tokens = 1
    events = choice_end(job, 1)
    assert [type(e) for e in events] == [Delta, Done] or [type(e) for e in events] == [Done]
    assert [e.seq for e in events] == list(range(5, 5 + len(events)))
    assert job.choices[1].done and not job.finished


def test_accepted_names_the_worker_and_a_chat_jobs_parsers(tok: Any) -> None:
    job = running(tok, delivery("a", attempt=3))
    event = accepted(job, "w1", OutputParsers())
    assert event == Accepted(seq=0, worker="w1", attempt=3, prompt_tokens=3)
    chat = running(tok, delivery("c", kind=JobKind.CHAT))
    parsers = OutputParsers()
    event = accepted(chat, "w1", parsers)
    assert (event.reasoning_parser, event.tool_call_parser) == (parsers.reasoning, parsers.tool_calls)


def test_a_continued_job_goes_on_from_the_tokens_its_client_has(tok: Any) -> None:
    item = delivery("a", n=3, attempt=2, seed=7)
    job = running(tok, item)
    sent = tok.encode("Redis streams")
    past = log_of(
        Delta(seq=1, index=0, text="Redis streams", token_ids=sent),
        done(seq=2, index=1, tokens=4),
        Delta(seq=3, index=2, text="x", token_ids=sent[:1]),
    )
    requests = generation_requests(item.job, [1, 2, 3], len(sent) + 5, SamplingDefaults())
    requests[2].max_new_tokens = 1  # its one token is sent already: complete, never run again
    to_run = continued_requests(job, requests, past)
    assert [r.seq_id for r in to_run] == ["a/0"]
    (first,) = to_run
    assert first.prompt_ids == [1, 2, 3, *sent] and first.max_new_tokens == 5
    assert first.seed not in (None, 7)  # moved on, so the continuation does not repeat the first tokens' draws
    assert (job.choices[0].tokens, job.choices[1].done, job.choices[1].tokens) == (len(sent), True, 4)
    assert job.ended_at_admission == [2]


def test_an_out_of_memory_error_is_named_by_its_type_or_its_text() -> None:
    """torch raises OutOfMemoryError whatever its message says; an engine passes it on as "Type: message" text."""
    from broker.errors import OutOfMemory
    from workers.admission import engine_failure

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name, as the check sees it
        pass

    assert isinstance(engine_failure(OutOfMemoryError("allocation failed")), OutOfMemory)
    assert isinstance(engine_failure(message="OutOfMemoryError: allocation failed"), OutOfMemory)
    assert isinstance(engine_failure(message="RuntimeError: CUDA out of memory. Tried to allocate"), OutOfMemory)
    assert not isinstance(engine_failure(RuntimeError("an illegal memory access")), OutOfMemory)
