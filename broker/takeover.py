"""The takeover of jobs whose worker is gone: a dead or wedged worker's pending entries claimed by a live one (or set
aside, dead-lettered, when they keep killing workers or were delivered too often), a live worker's deliveries lost
on their way, and the strays of a worker's own that Redis brought back after a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from broker.decode import Pending, idle_consumers, pending_entries
from broker.deliveries import Delivery, Malformed, claimed_of
from broker.keys import CONSUMER_GROUP, Keys
from broker.publisher import EventPublisher
from broker.registry import WEDGED, status_of
from broker.schemas import Error
from broker.streams import WorkerStreams

log = logging.getLogger(__name__)

# A job's count of workers that died holding it is kept this long after the last death: longer than any job runs.
DEATHS_TTL_S = 24 * 3600


@dataclass
class Reclaimed:
    """What one reclaim pass did: jobs taken over from dead workers (to run again) and jobs given up on."""

    deliveries: list[Delivery | Malformed]
    dead_lettered: list[str]


class Takeover:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        streams: WorkerStreams,
        publisher: EventPublisher,
        consumer: str,
        *,
        max_deliveries: int,
        max_worker_deaths: int,
        heartbeat_ttl: float,
        claim_min_idle: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.streams = streams
        self.publisher = publisher
        self.consumer = consumer
        self.max_deliveries = max_deliveries
        self.max_worker_deaths = max_worker_deaths
        # An entry pending this long to a live worker that does not say it runs it was lost on its way: by then the
        # worker has heartbeaten (it lives) more than a TTL after the delivery, long after it would have admitted it.
        self.lost_delivery_ms = int(2 * heartbeat_ttl * 1000)
        self.claim_min_idle_ms = int(claim_min_idle * 1000)

    def reclaim(self, count: int) -> Reclaimed:
        """Take over up to ``count`` jobs that workers without a heartbeat (or wedged ones) left pending, and forget
        those workers.

        A pending entry is only taken when its consumer's heartbeat key is gone or says it is wedged, so a long job
        on a live worker is never stolen however long it runs; XCLAIM's min-idle makes two live workers racing for
        one entry safe (the first claim resets the idle time, the second then claims nothing).

        Two limits set a job aside (dead-letter it, telling its client why): ``max_worker_deaths`` workers died
        while holding it (a job that kills whoever runs it, e.g. one that runs them out of memory, must not take
        the whole fleet down; a worker that deregistered after handing its jobs back did not die), or it was
        delivered ``max_deliveries`` times in all.
        """
        taken: list[Delivery | Malformed] = []
        dead_lettered: list[str] = []
        self.streams.refresh()
        for stream in self.streams.all():  # interactive jobs first
            if len(taken) >= count:
                break
            pending = pending_entries(
                self.client.xpending_range(
                    stream, CONSUMER_GROUP, min="-", max="+", count=max(count * 4, 16), idle=self.claim_min_idle_ms
                )
            )
            owners = sorted({p.consumer for p in pending} - {self.consumer})
            lost, holding = self._lost_owners(owners)
            orphans = [p for p in pending if p.consumer in lost or self._lost_on_its_way(p, holding.get(p.consumer))]
            orphans = orphans[: count - len(taken)]
            if orphans:
                deliveries = {p.entry_id: p.deliveries + 1 for p in orphans}
                owner_of = {p.entry_id: p.consumer for p in orphans}
                claimed = self.client.xclaim(
                    stream, CONSUMER_GROUP, self.consumer, self.claim_min_idle_ms, list(deliveries)
                )
                items = claimed_of(stream, claimed, deliveries)
                deaths = self._count_deaths(
                    [i for i in items if isinstance(i, Delivery) and lost.get(owner_of[i.entry_id], False)]
                )
                for item in items:
                    if isinstance(item, Delivery) and deaths.get(item.job.id, 0) >= self.max_worker_deaths:
                        self._dead_letter(item, deaths=deaths[item.job.id])
                        dead_lettered.append(item.job.id)
                    elif isinstance(item, Delivery) and item.job.attempt > self.max_deliveries:
                        self._dead_letter(item)
                        dead_lettered.append(item.job.id)
                    else:
                        taken.append(item)
            self._forget_dead_consumers(stream)
        if taken or dead_lettered:
            log.warning("took over %d jobs from dead workers, dead-lettered %d", len(taken), len(dead_lettered))
        return Reclaimed(taken, dead_lettered)

    def holding(self) -> int:
        """How many entries of this worker's streams are pending to it (delivered, not acknowledged)."""
        self.streams.refresh()
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams.all():
            pipe.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=1, consumername=self.consumer)
        return sum(len(reply) for reply in pipe.execute())

    def _lost_on_its_way(self, pending: Pending, holding: set[str] | None) -> bool:
        """A live worker's pending entry that it does not run, long after it was delivered (see holding)."""
        if holding is None or pending.entry_id in holding:
            return False
        return pending.idle_ms >= self.lost_delivery_ms

    def _lost_owners(self, consumers: Sequence[str]) -> tuple[dict[str, bool], dict[str, set[str]]]:
        """Of these consumers, the ones whose jobs are to be taken over, each with whether it died (True) or left
        cleanly after handing its jobs back (False). Dead: no heartbeat and no mark of a clean leave; wedged: its
        heartbeat says its engine stopped making progress (it exits, and its jobs are not its fault so much as
        they may be the cause: counted as a death). Then the live ones' entries that they say they run."""
        if not consumers:
            return {}, {}
        # one MGET: heartbeats and left marks share the registry's slot
        replies = self.client.mget([self.keys.heartbeat(c) for c in consumers] + [self.keys.left(c) for c in consumers])
        beats, lefts = replies[: len(consumers)], replies[len(consumers) :]
        lost: dict[str, bool] = {}
        holding: dict[str, set[str]] = {}
        for consumer, beat, left in zip(consumers, beats, lefts, strict=True):
            if beat is None:
                lost[consumer] = left is None
                continue
            status = status_of(beat)
            if status.state == WEDGED:
                lost[consumer] = True
            elif status.holding is not None:
                holding[consumer] = set(status.holding)
        return lost, holding

    def _count_deaths(self, deliveries: Sequence[Delivery]) -> dict[str, int]:
        """Add one death to each of these jobs (their worker died holding them); their totals so far."""
        if not deliveries:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for delivery in deliveries:
            key = self.keys.deaths(delivery.job.id)
            pipe.incr(key)
            pipe.expire(key, DEATHS_TTL_S)
        replies = pipe.execute()
        return {d.job.id: int(n) for d, n in zip(deliveries, replies[::2], strict=True)}

    def strays(self, known: set[tuple[str, str]], count: int) -> list[Delivery | Malformed]:
        """Up to ``count`` entries pending to this worker that it neither runs nor has still to acknowledge
        (``known``: (stream, entry id) pairs), claimed again with the next attempt.

        Redis restarted from an append-only file written once a second can bring back such an entry: a finished
        job whose acknowledgement was among the writes lost, or a delivery whose reply this worker never read.
        Nobody else takes a live worker's entries, so left alone it would stay pending forever. The worker
        acknowledges the ones whose log says they ended and continues the others, as for a dead worker's."""
        taken: list[Delivery | Malformed] = []
        self.streams.refresh()
        for stream in self.streams.all():
            if len(taken) >= count:
                break
            pending = pending_entries(
                self.client.xpending_range(
                    stream,
                    CONSUMER_GROUP,
                    min="-",
                    max="+",
                    count=max(count * 4, 16),
                    consumername=self.consumer,
                    idle=self.claim_min_idle_ms,
                )
            )
            deliveries = {p.entry_id: p.deliveries + 1 for p in pending if (stream, p.entry_id) not in known}
            ids: list[Any] = list(deliveries)[: count - len(taken)]
            if not ids:
                continue
            claimed = self.client.xclaim(stream, CONSUMER_GROUP, self.consumer, self.claim_min_idle_ms, ids)
            taken += claimed_of(stream, claimed, deliveries, least=2)
        if taken:
            log.warning("found %d jobs pending to this worker that it was not running; taking them up", len(taken))
        return taken

    def _without_heartbeat(self, consumers: Sequence[str]) -> set[str]:
        if not consumers:
            return set()
        beats = self.client.mget([self.keys.heartbeat(c) for c in consumers])
        return {c for c, beat in zip(consumers, beats, strict=True) if beat is None}

    def _forget_dead_consumers(self, stream: str) -> None:
        """Delete consumers that hold nothing and have no heartbeat, so the group does not grow forever."""
        idle_ones = [
            c for c in idle_consumers(self.client.xinfo_consumers(stream, CONSUMER_GROUP)) if c != self.consumer
        ]
        for name in self._without_heartbeat(idle_ones):
            self.client.xgroup_delconsumer(stream, CONSUMER_GROUP, name)

    def _dead_letter(self, delivery: Delivery, deaths: int = 0) -> None:
        job = delivery.job
        if deaths:
            # A 4xx, not a 5xx: the request itself is the likely cause, and clients retry 5xx answers on their own
            # (openai-python twice), which would hand it to more workers.
            code, status = "worker_crashed", 400
            message = (
                f"job {job.id} was running on {deaths} workers that each died (killed, out of memory or wedged) "
                "before finishing it; it was set aside (dead-lettered) so it cannot take down more workers"
            )
        else:
            code, status = "worker_lost", 503
            message = (
                f"job {job.id} was given to {job.attempt - 1} workers and none of them finished it; it was set "
                "aside (dead-lettered)"
            )
        log.error("%s", message)
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(
            self.keys.dead(job.model),
            {"job": job.model_dump_json(), "reason": message, "at": str(time.time())},
            maxlen=10_000,
            approximate=True,
        )
        self.publisher.send(pipe, job.id, Error(seq=0, code=code, message=message, status=status), ended=True)
        pipe.xack(delivery.stream, CONSUMER_GROUP, delivery.entry_id)
        pipe.xdel(delivery.stream, delivery.entry_id)
        pipe.hincrby(self.keys.stats(job.model), "dead", 1)
        pipe.execute(raise_on_error=False)
