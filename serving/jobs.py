"""Submitted jobs and their events, for every front end: submit a request's jobs, merge their events, collect a
whole answer; and the hook through which an observer (the API's metrics) sees every job and event.

An observer is given with :func:`submit_all`; from then on every event of those jobs that passes through
:func:`submit_all` (the first) or :func:`merged` (the rest) is shown to it once, in arrival order. Nothing here
knows what the observer does with them.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.jobevents import JobEvents
from broker.producer import Producer
from broker.schemas import Accepted, AnyEvent, Delta, Done, Job, TokenLogprob
from serving.prompt_size import check_prompt_sizes


class JobObserver(Protocol):
    """Sees the jobs of the requests it was given to, and each of their events (the API's metrics)."""

    def job_submitted(self, events: JobEvents, submitted: float) -> None:
        """``events``' job was queued; it arrived at ``submitted`` (``time.monotonic()``)."""

    def job_event(self, events: JobEvents, event: AnyEvent) -> None:
        """``event`` of the job arrived."""


class Observers:
    """Several observers seen as one, in order (the metrics and the request's log line)."""

    def __init__(self, *observers: JobObserver | None) -> None:
        self.observers = [o for o in observers if o is not None]

    def job_submitted(self, events: JobEvents, submitted: float) -> None:
        for observer in self.observers:
            observer.job_submitted(events, submitted)

    def job_event(self, events: JobEvents, event: AnyEvent) -> None:
        for observer in self.observers:
            observer.job_event(events, event)


# The observer of each watched job, released with the job's events object (whatever way the request ended).
_observers: weakref.WeakKeyDictionary[JobEvents, JobObserver] = weakref.WeakKeyDictionary()


def _seen(events: JobEvents, event: AnyEvent) -> None:
    observer = _observers.get(events)
    if observer is not None:
        observer.job_event(events, event)


async def submit_all(
    producer: Producer,
    jobs: Sequence[Job],
    observer: JobObserver | None = None,
    *,
    low_priority: bool = False,
    resume: dict[str, Any] | None = None,
) -> list[JobEvents]:
    """Submit every job and wait for each first event, so an error before the first token becomes a proper
    4xx. On any failure the jobs already submitted are closed (their workers then cancel them). ``resume`` is
    kept in each job's event log for a front server that resumes the stream (see the producer's ``submit``)."""
    await check_prompt_sizes(producer, jobs)  # before anything is queued
    submitted: list[JobEvents] = []
    try:
        for job in jobs:
            arrived = time.monotonic()
            submitted.append(await producer.submit(job, low_priority=low_priority, resume=resume))
            if observer is not None:
                _observers[submitted[-1]] = observer
                observer.job_submitted(submitted[-1], arrived)
        firsts = await asyncio.gather(*(e.next_event() for e in submitted))
    except BaseException:
        for events in submitted:
            events.close()
        raise
    for events, first in zip(submitted, firsts, strict=True):
        events.pending_first = first
        _seen(events, first)
    return submitted


async def merged(streams: Sequence[JobEvents]) -> AsyncIterator[tuple[int, AnyEvent]]:
    """Events of several jobs as (job position, event), in arrival order."""
    if len(streams) == 1:
        async for event in streams[0]:
            _seen(streams[0], event)
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, AnyEvent | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, events: JobEvents) -> None:
        try:
            async for event in events:
                _seen(events, event)
                await queue.put((position, event))
            await queue.put((position, None))
        except BaseException as exc:
            await queue.put((position, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            position, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class ChoiceText:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    completion_tokens: int = 0
    cached_tokens: int | None = None

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.logprob or 0.0 for t in self.logprobs)


@dataclass
class Collected:
    """A whole answer gathered from events, for non-streaming responses."""

    choices: dict[int, ChoiceText] = field(default_factory=dict)
    prompt_tokens: int = 0
    accepted: Accepted | None = None  # the last job's (it tells how the worker's model writes its output)

    def add(self, index: int, event: AnyEvent) -> None:
        choice = self.choices.setdefault(index, ChoiceText())
        if isinstance(event, Delta):
            choice.text.append(event.text)
            choice.token_ids += event.token_ids
            if event.logprobs:
                choice.logprobs += event.logprobs
        elif isinstance(event, Done):
            choice.finish_reason = event.finish_reason.value
            choice.stop_reason = event.stop_reason
            choice.completion_tokens = event.usage.completion_tokens
            choice.cached_tokens = event.usage.cached_tokens

    def restart(self, indices: range) -> None:
        """Forget what these choices gathered: their job is being run again by another worker."""
        for index in indices:
            self.choices.pop(index, None)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices.values())

    def cached_tokens(self, per_job: int) -> int | None:
        """The prompt tokens the engines found cached, over all jobs (each job's prompt counted once); None where
        no engine told."""
        per_position: dict[int, int] = {}
        for index, choice in self.choices.items():
            if choice.cached_tokens is not None:
                per_position[index // per_job] = max(per_position.get(index // per_job, 0), choice.cached_tokens)
        return sum(per_position.values()) if per_position else None


async def done_of(producer: Producer, job: Job, observer: JobObserver | None = None) -> Done | None:
    """Submit one job that a worker answers at admission (a token count, embeddings) and return its ``done``
    event; its ``error`` event is raised, as :func:`merged` raises it."""
    streams = await submit_all(producer, [job], observer)
    done: Done | None = None
    try:
        async for _, event in merged(streams):
            if isinstance(event, Done):
                done = event
    finally:
        close_all(streams)
    return done


async def reattach(producer: Producer, job_id: str, meta: dict[str, Any]) -> JobEvents:
    """A job another front server submitted, from its first event (read back from its log) on, with that first
    event already taken (``pending_first``), as :func:`submit_all` leaves a job it submitted. The caller closes it."""
    events = await producer.attach(job_id, meta)
    try:
        events.pending_first = await events.next_event()
    except BaseException:
        events.close()
        raise
    return events


def close_all(streams: Sequence[JobEvents]) -> None:
    for s in streams:
        s.close()


def prompt_tokens_of(streams: Sequence[JobEvents]) -> int:
    return sum(e.pending_first.prompt_tokens for e in streams if isinstance(e.pending_first, Accepted))


async def collect(streams: Sequence[JobEvents], per_job: int) -> Collected:
    """Every job's whole answer, choices numbered ``position * per_job + index``; the jobs are closed after. A job
    that restarts on another worker starts its choices over."""
    collected = Collected()
    collected.accepted = next((s.pending_first for s in streams if isinstance(s.pending_first, Accepted)), None)
    try:
        async for position, event in merged(streams):
            if isinstance(event, Accepted):  # the job (re)started on a worker
                collected.restart(range(position * per_job, (position + 1) * per_job))
                collected.accepted = event
            elif isinstance(event, Delta | Done):
                collected.add(position * per_job + event.index, event)
    finally:
        close_all(streams)
    return collected
