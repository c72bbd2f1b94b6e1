"""The workers' side of the protocol: read jobs from the model streams, publish events, acknowledge.

All methods are synchronous and batch their commands: a worker makes one round trip to read, one per engine
step to publish every running job's events (and append them to the jobs' logs, see broker/eventlog.py), and one to
acknowledge what finished. :class:`JobConsumer` is the face a worker uses; the parts it composes do one job each:
the streams it reads (broker/streams.py), the fair read by turns (broker/fairread.py), publishing
(broker/publisher.py) and the takeover of dead workers' jobs (broker/takeover.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence

import redis
from redis.exceptions import ResponseError

from broker import eventlog
from broker.connection import is_cluster
from broker.deliveries import Delivery, Malformed, deliveries_of
from broker.eventlog import JobLog
from broker.fairread import FairRead
from broker.keys import CONSUMER_GROUP, LOG_META_ID, Keys
from broker.publisher import EventPublisher
from broker.schemas import AnyEvent
from broker.streams import WorkerStreams
from broker.takeover import Reclaimed, Takeover

# the public face of the workers' protocol, with the records its methods answer
__all__ = ["Delivery", "JobConsumer", "Malformed", "Reclaimed"]


class JobConsumer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        models: Sequence[str],
        consumer: str,
        *,
        max_deliveries: int = 3,
        max_worker_deaths: int = 2,
        heartbeat_ttl: float = 6.0,
        claim_min_idle: float = 1.0,
        event_log: bool = True,
        event_log_ttl: float = 300.0,
        event_log_maxlen: int = 100_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.models = list(models)
        self.consumer = consumer
        self.cluster = is_cluster(client)
        self.streams = WorkerStreams(client, keys, self.models, cluster=self.cluster)
        self.fair_read = FairRead(client, keys, self.streams, consumer, cluster=self.cluster)
        self.publisher = EventPublisher(
            client,
            keys,
            consumer,
            cluster=self.cluster,
            event_log=event_log,
            event_log_ttl=event_log_ttl,
            event_log_maxlen=event_log_maxlen,
        )
        self.takeover = Takeover(
            client,
            keys,
            self.streams,
            self.publisher,
            consumer,
            max_deliveries=max_deliveries,
            max_worker_deaths=max_worker_deaths,
            heartbeat_ttl=heartbeat_ttl,
            claim_min_idle=claim_min_idle,
        )
        self._next_group = 0  # the group a blocking read waits on next, in turn
        self.clock_offset = 0.0  # Redis's clock minus this host's, as last measured (see sync_clock)

    @property
    def event_log(self) -> bool:
        """Whether jobs' events are appended to their logs as they are published."""
        return self.publisher.event_log

    @event_log.setter
    def event_log(self, on: bool) -> None:
        self.publisher.event_log = on

    def sync_clock(self) -> None:
        """Measure how far Redis's clock is from this host's (TIME, halfway through the round trip). Deadlines are
        compared on Redis's clock (see :attr:`Delivery.deadline`); a worker re-measures with every heartbeat."""
        before = time.time()
        seconds, micros = self.client.time()
        after = time.time()
        self.clock_offset = seconds + micros / 1e6 - (before + after) / 2

    def redis_now(self) -> float:
        """Now, on Redis's clock."""
        return time.time() + self.clock_offset

    def ensure_groups(self) -> None:
        """Create each stream and its consumer group (idempotent). A front server treats an existing stream as
        a known model, so this is also how a model becomes known. (A tenant's stream is made with its group by
        the script that queues its first job.)"""
        for stream in self.streams.own + self.streams.low:
            try:
                self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def model_of(self, stream: str) -> str:
        """The model a stream of this worker belongs to."""
        return self.streams.model_of(stream)

    def read(self, count: int, block_ms: int | None) -> list[Delivery | Malformed]:
        """Up to ``count`` new jobs per model; blocks up to ``block_ms`` when there are none (None: don't block).

        Each model's tenants take turns by weight (see :mod:`broker.fairness`), one script per model, all in one
        pipeline: a busy worker makes one round trip per read. Interactive jobs come first: the batch streams are
        only read when the interactive ones gave nothing, so a job sent while a batch keeps this worker busy takes
        the next free slot (a worker of several models reads its batch streams in a second round trip).
        """
        single = len(self.models) == 1
        try:
            items: list[Delivery | Malformed] = []
            for model, (reply, streams) in zip(self.models, self.fair_read.replies(count, single), strict=True):
                self.streams.learn(model, streams)
                items += deliveries_of(reply)
            if not items and not single:
                for _, low_streams in self.streams.read_groups:  # one command per cluster slot (one on a single Redis)
                    reply = self.client.xreadgroup(
                        CONSUMER_GROUP, self.consumer, dict.fromkeys(low_streams, ">"), count=count
                    )
                    items += deliveries_of(reply)
            if items or block_ms is None:
                return items
            # Nothing anywhere: wait for the first job of any kind. Whichever stream wakes the read is the only
            # one served, so an interactive job arriving now is never taken together with a batch's. (A tenant's
            # first job of a model, whose stream is new, waits for the next read: at most block_ms.) Models on
            # several cluster slots are waited on in turn, each for a share of the time.
            groups = self.streams.read_groups
            streams, low_streams = groups[self._next_group % len(groups)]
            self._next_group += 1
            share = max(block_ms // len(groups), 1) if block_ms else block_ms
            fair = self.streams.tenants_of(streams)
            reply = self.client.xreadgroup(
                CONSUMER_GROUP,
                self.consumer,
                dict.fromkeys(streams + fair + low_streams, ">"),
                count=count,
                block=share,
            )
            return deliveries_of(reply)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without AOF): recreate and carry on
                self.ensure_groups()
                return []
            raise

    def reclaim(self, count: int) -> Reclaimed:
        """Take over up to ``count`` jobs that dead (or wedged) workers left pending (see
        :meth:`broker.takeover.Takeover.reclaim`)."""
        return self.takeover.reclaim(count)

    def strays(self, known: set[tuple[str, str]], count: int) -> list[Delivery | Malformed]:
        """Up to ``count`` entries pending to this worker that it neither runs nor has still to acknowledge (see
        :meth:`broker.takeover.Takeover.strays`)."""
        return self.takeover.strays(known, count)

    def holding(self) -> int:
        """How many entries of this worker's streams are pending to it (delivered, not acknowledged)."""
        return self.takeover.holding()

    def subscribers(self, job_ids: Iterable[str]) -> list[int]:
        """How many front servers listen to each job's channel (0: the client has gone)."""
        channels = [self.keys.events(j) for j in job_ids]
        if not channels:
            return []
        if self.cluster:
            counts = dict(self.client.pubsub_shardnumsub(*channels))
        else:
            counts = dict(self.client.pubsub_numsub(*channels))
        return [int(counts.get(c.encode(), counts.get(c, 0))) for c in channels]

    def publish(
        self,
        events: Sequence[tuple[str, AnyEvent]],
        ended: Iterable[str] = (),
        owned: Mapping[str, Delivery | Malformed] | None = None,
    ) -> list[int]:
        """Publish (job id, event) pairs in one round trip, each appended to its job's log first, fenced by the
        entries in ``owned`` (see :meth:`broker.publisher.EventPublisher.publish`); the receiver count of each."""
        return self.publisher.publish(events, ended, owned)

    def read_logs(self, job_ids: Sequence[str]) -> dict[str, JobLog]:
        """The event logs of these jobs, in one round trip (for a worker continuing them)."""
        if not job_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.xrange(self.keys.log(job_id))
        return {j: eventlog.parse_entries(r) for j, r in zip(job_ids, pipe.execute(), strict=True)}

    def restart_log(self, job_id: str, old: JobLog) -> None:
        """Start a job's log over, keeping what its front server recorded: the job runs again from its first token
        (so its ``seq`` starts at 0 again)."""
        key = self.keys.log(job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if old.meta is not None:
            pipe.xadd(key, {eventlog.META_FIELD: json.dumps(old.meta)}, id=LOG_META_ID)
            deadline = float(old.meta.get("deadline") or time.time())
            pipe.pexpire(key, eventlog.submission_ttl_ms(deadline, self.publisher.event_log_ttl))
        pipe.execute()

    def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        """The jobs whose front server said their client hung up (as opposed to a front server that died)."""
        if not job_ids:
            return set()
        names = [self.keys.cancel(j) for j in job_ids]
        # the jobs of several models are on several slots of a cluster: one MGET per slot
        marks = self.client.mget_nonatomic(names) if self.cluster else self.client.mget(names)  # type: ignore[attr-defined]
        return {j for j, mark in zip(job_ids, marks, strict=True) if mark is not None}

    def ack(
        self, items: Sequence[Delivery | Malformed], counters: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        """Acknowledge and delete finished entries, so a stream's length is its backlog (waiting + running), and
        add ``counters`` ({model: {field: n}}) to the models' stats hashes in the same round trip."""
        if not items and not counters:
            return
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.xack(item.stream, CONSUMER_GROUP, item.entry_id)
            pipe.xdel(item.stream, item.entry_id)
        for model, fields in (counters or {}).items():
            for name, value in fields.items():
                if value:
                    pipe.hincrby(self.keys.stats(model), name, value)
        pipe.execute()
