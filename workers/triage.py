"""What the entries a worker has read become before any of them reaches the engine, decided without Redis, the
engine or a clock (the caller reads those and passes what they said): a malformed entry is dropped with an
``invalid_job`` error, a job whose log shows it ended is acknowledged, one past its deadline fails with ``timeout``,
one whose client left is skipped with ``cancelled``; the others are to start (or continue from their log).
Each settled entry is counted once, in :class:`~workers.outcomes.Outcomes`. And of the running jobs nobody
listens to any more, which are to be cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker.consumer import Delivery, Malformed
from broker.errors import InvalidJob, JobCancelled, JobTimedOut
from broker.eventlog import JobLog
from broker.schemas import Job, error_event
from workers.admission import AnyEvent
from workers.outcomes import Outcomes

log = logging.getLogger(__name__)


@dataclass
class ToStart:
    delivery: Delivery
    past: JobLog | None  # the log of a job taken over from another worker
    first_seq: int  # the seq of its first event from here


@dataclass
class Triage:
    events: list[tuple[str, AnyEvent]] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # the jobs whose last event is among ``events``
    finished: list[Delivery | Malformed] = field(default_factory=list)  # to acknowledge
    to_start: list[ToStart] = field(default_factory=list)

    def fail(self, item: Delivery | Malformed, job_id: str, event: AnyEvent) -> None:
        """End ``item`` here with ``event`` (its error), acknowledging it."""
        self.finished.append(item)
        self.events.append((job_id, event))
        self.ended.add(job_id)


def unheard(deliveries: Iterable[Delivery], listeners: Iterable[int]) -> list[str]:
    """The ids of the jobs nobody was subscribed to (``listeners``: how many were, per delivery, in order)."""
    return [d.job.id for d, n in zip(deliveries, listeners, strict=True) if not n]


def all_done(job: Job, past: JobLog) -> bool:
    """Whether the log holds every choice's end: the job was answered, its entry only left unacknowledged."""
    return past.whole and all(past.done(i) is not None for i in range(job.params.n))


def triage(
    items: list[Delivery | Malformed],
    *,
    skipped: set[str],
    pasts: dict[str, JobLog],
    now: float,
    model_of: Callable[[str], str],
    outcomes: Outcomes,
    recounted: bool = True,
) -> Triage:
    """Sort ``items`` (read in this order) into those settled at once and those to start. ``skipped``: the jobs
    whose client left; ``pasts``: the logs of jobs taken over; ``now``: Redis's clock, which deadlines are on;
    ``recounted``: whether a job found ended in its log is counted (False for one counted when it ended here)."""
    out = Triage()
    for item in items:
        if isinstance(item, Malformed):
            log.warning("dropping malformed entry %s on %s: %s", item.entry_id, item.stream, item.reason)
            outcomes.count(model_of(item.stream), "failed")
            if item.job_id:
                out.fail(item, item.job_id, error_event(InvalidJob(item.reason), seq=0))
            else:
                out.finished.append(item)
    for item in items:
        if not isinstance(item, Delivery):
            continue
        job = item.job
        past = pasts.get(job.id)
        first_seq = past.next_seq if past is not None and past.whole else 0
        if past is not None and (past.error is not None or all_done(job, past)):
            out.finished.append(item)  # its worker published its end, then died before acknowledging it
            if recounted:
                outcomes.count(job.model, "failed" if past.error is not None else "completed", served=False)
        elif item.deadline < now:
            outcomes.count(job.model, "expired", served=False)
            out.fail(item, job.id, error_event(JobTimedOut("the job's deadline passed"), first_seq))
        elif job.id in skipped:  # the client left before the job started
            outcomes.count(job.model, "cancelled", served=False)
            message = "no client was listening to the job when a worker took it"
            out.fail(item, job.id, error_event(JobCancelled(message), first_seq))
        else:
            out.to_start.append(ToStart(item, past, first_seq))
    return out


def orphans_to_cancel(
    unheard: set[str], marked: set[str], unheard_since: dict[str, float], now: float, grace: float
) -> set[str]:
    """Of the running jobs nobody heard (``unheard``), those to cancel: the ones whose front server marked their
    client gone (``marked``), and the ones unheard since ``grace`` seconds before ``now`` (their front server died;
    until then the client may resume the stream on another one)."""
    return {j for j in unheard if j in marked or now - unheard_since[j] >= grace}
