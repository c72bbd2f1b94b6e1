"""What a running job's events are, decided without Redis or the engine: the ``accepted`` event of a job that
starts, the events of one engine update of one choice (its text, its tokens, its end), and the end of a choice that
a continuation found complete. The consume loop (workers/service.py) acts on what these decide: it cancels the
sequences they say to stop and publishes their events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.schemas import Accepted, Delta, Done, FinishReason, JobKind, error_event
from workers.admission import AnyEvent, engine_failure
from workers.engine import SeqUpdate
from workers.parsing import OutputParsers
from workers.running import RunningJob
from workers.token_text import TokenLogprobs


@dataclass
class Step:
    """What one engine update of one choice comes to."""

    events: list[AnyEvent] = field(default_factory=list)
    failed: bool = False  # the engine failed the sequence: its job fails, its other sequences are to be cancelled
    stop: bool = False  # the text reached a stop before the engine ended the sequence: it is to be cancelled
    finished: bool = False  # the choice ended: its share goes back, then its ``done`` (see choice_done) follows


def is_late(running: RunningJob | None, index: int) -> bool:
    """Whether an update is for a job or choice that has ended already (computed before a cancel took effect)."""
    return running is None or running.choices[index].done


def step(running: RunningJob, index: int, update: SeqUpdate, logprobs: TokenLogprobs, now: float) -> Step:
    """Apply one engine update to choice ``index`` of ``running`` (its tokens, its text) and say what it comes to;
    ``now`` is when it arrived (the job's first token time)."""
    if update.error is not None:
        failure = engine_failure(message=update.error)
        running.failed = True
        return Step(events=[error_event(failure, running.next_seq())], failed=True)
    choice = running.choices[index]
    choice.tokens += len(update.token_ids)
    if update.cached_tokens is not None:
        running.cached_tokens = update.cached_tokens
    if update.token_ids and running.first_token_at is None:
        running.first_token_at = now
    text = choice.text.feed(update.token_ids)
    out = Step(stop=choice.text.stopped and not update.finished)
    out.finished = update.finished or choice.text.stopped
    if out.finished:
        text += choice.text.flush()
    if text or update.token_ids:
        token_logprobs = logprobs.of_update(update) if running.job.params.logprobs else None
        if token_logprobs and out.finished and choice.text.ended_by_token:
            token_logprobs = token_logprobs[:-1]  # the end-of-sequence token is not part of the answer
        delta = Delta(
            seq=running.next_seq(), index=index, text=text, token_ids=update.token_ids, logprobs=token_logprobs
        )
        out.events.append(delta)
    if out.finished:
        choice.done = True
    return out


def choice_done(running: RunningJob, index: int) -> Done:
    """The ``done`` event of a choice that ended: stopped (by a stop string or token) or out of tokens."""
    choice = running.choices[index]
    stopped = choice.text.stopped or choice.text.ended_by_token
    return Done(
        seq=running.next_seq(),
        index=index,
        finish_reason=FinishReason.STOP if stopped else FinishReason.LENGTH,
        usage=running.usage_of(choice),
        stop_reason=choice.text.stop_reason,
    )


def choice_end(running: RunningJob, index: int) -> list[AnyEvent]:
    """The last events of a choice a continuation found complete: the text held back, then ``done``."""
    choice = running.choices[index]
    choice.done = True
    out: list[AnyEvent] = []
    text = choice.text.flush()
    if text:
        out.append(Delta(seq=running.next_seq(), index=index, text=text, token_ids=[]))
    out.append(choice_done(running, index))
    return out


def accepted(running: RunningJob, worker: str, parsers: OutputParsers) -> Accepted:
    """The first event of a job that starts (or continues) on ``worker``."""
    job = running.job
    return Accepted(
        seq=running.next_seq(),
        worker=worker,
        attempt=job.attempt,
        prompt_tokens=running.prompt_tokens,
        prompt_logprobs=None if running.continued else running.prompt_logprobs,
        **_parsers_of(running, parsers),
    )


def _parsers_of(running: RunningJob, parsers: OutputParsers) -> dict[str, Any]:
    """What a chat job's ``accepted`` event tells of how to read its output."""
    if running.job.kind != JobKind.CHAT:
        return {}
    return {"reasoning_parser": parsers.reasoning, "tool_call_parser": parsers.tool_calls,
            "reasoning_open": running.reasoning_open}  # fmt: skip
