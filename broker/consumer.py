"""The workers' side of the protocol: read jobs from the model streams, publish events, acknowledge.

All methods are synchronous and batch their commands: a worker makes one round trip to read, one per engine
step to publish every running job's events (and append them to the jobs' logs, see broker/eventlog.py), and one to
acknowledge what finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError
from redis.exceptions import NoScriptError, ResponseError

from broker import eventlog
from broker.connection import is_cluster
from broker.eventlog import JobLog
from broker.fairness import FAIR_READ_SCRIPT
from broker.keys import CONSUMER_GROUP, LOG_META_ID, Keys, model_slot
from broker.registry import WEDGED, status_of
from broker.schemas import Accepted, Delta, Done, Error, Job

log = logging.getLogger(__name__)

AnyEvent = Accepted | Delta | Done | Error
# A job's count of workers that died holding it is kept this long after the last death: longer than any job runs.
DEATHS_TTL_S = 24 * 3600


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Delivery:
    """A job as read from a stream, with what is needed to acknowledge it."""

    stream: str
    entry_id: str
    job: Job

    @property
    def deadline(self) -> float:
        """The job's deadline on Redis's clock, so that no two hosts' clocks need to agree: when it entered its
        stream (the entry id's milliseconds: Redis's clock) plus its time budget (``deadline - created``, both
        stamped by its front server's clock, whose difference does not depend on that clock being right)."""
        queued_at = int(self.entry_id.split("-", 1)[0]) / 1000
        return queued_at + max(self.job.deadline - self.job.created, 0.0)


@dataclass
class Malformed:
    """A stream entry that is not a valid job. It is acknowledged and counted, never run."""

    stream: str
    entry_id: str
    reason: str
    job_id: str | None


@dataclass
class Reclaimed:
    """What one reclaim pass did: jobs taken over from dead workers (to run again) and jobs given up on."""

    deliveries: list[Delivery | Malformed]
    dead_lettered: list[str]


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
        self.streams = [keys.jobs(m) for m in self.models]
        # Batch lines: read only when the interactive streams have nothing for this worker.
        self.low_streams = [keys.batch_jobs(m) for m in self.models]
        self.cluster = is_cluster(client)
        # A script or an XREADGROUP touches one slot on a cluster: the models of each slot are read apart. (On a
        # single Redis, every model is read at once.)
        by_slot: dict[int, list[str]] = {}
        for model in self.models:
            by_slot.setdefault(model_slot(model) if self.cluster else 0, []).append(model)
        self.read_groups = [(
            [keys.jobs(m) for m in models], [keys.batch_jobs(m) for m in models]
        ) for models in by_slot.values()]  # fmt: skip
        self._next_group = 0  # the group a blocking read waits on next, in turn
        self.max_deliveries = max_deliveries
        self.max_worker_deaths = max_worker_deaths
        # An entry pending this long to a live worker that does not say it runs it was lost on its way: by then the
        # worker has heartbeaten (it lives) more than a TTL after the delivery, long after it would have admitted it.
        self.lost_delivery_ms = int(2 * heartbeat_ttl * 1000)
        self.claim_min_idle_ms = int(claim_min_idle * 1000)
        self._fair_read = client.register_script(FAIR_READ_SCRIPT)
        # every stream of this worker's models -> its model; the tenants' streams are added as they are learnt
        self._model_of: dict[str, str] = {s: m for m in self.models for s in (keys.jobs(m), keys.batch_jobs(m))}
        self.fair_streams: dict[str, list[str]] = {m: [] for m in self.models}  # each model's tenant streams
        # sharded pub/sub on a cluster: a classic PUBLISH is sent to every node of the cluster
        self._fenced_publish = client.register_script(
            eventlog.SHARDED_FENCED_PUBLISH_SCRIPT if self.cluster else eventlog.FENCED_PUBLISH_SCRIPT
        )
        self.event_log = event_log
        self.event_log_ttl = event_log_ttl
        self.event_log_maxlen = event_log_maxlen
        self.clock_offset = 0.0  # Redis's clock minus this host's, as last measured (see sync_clock)

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
        for stream in self.streams + self.low_streams:
            try:
                self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def model_of(self, stream: str) -> str:
        """The model a stream of this worker belongs to."""
        return self._model_of.get(stream) or self.keys.model_of_jobs(stream)

    def _learn(self, model: str, streams: Iterable[Any]) -> None:
        names = [_text(s) for s in streams]
        self.fair_streams[model] = names
        self._model_of.update(dict.fromkeys(names, model))

    def refresh_streams(self) -> None:
        """Read the models' registries of tenant streams (one round trip), for the takeover passes."""
        pipe = self.client.pipeline(transaction=False)
        for model in self.models:
            pipe.hkeys(self.keys.fair_streams(model))
        for model, names in zip(self.models, pipe.execute(), strict=True):
            self._learn(model, names)

    def all_streams(self) -> list[str]:
        """Every stream this worker reads, interactive ones first (each model's own, then its tenants'), batch
        streams last; the tenant streams as last learnt."""
        fair = [s for m in self.models for s in self.fair_streams[m]]
        return self.streams + fair + self.low_streams

    def _fair_replies(self, count: int, single: bool) -> list[Any]:
        """The fair read script's reply for each model (broker/fairness.py): in one pipeline, or one call per model
        on a cluster (whose pipelines take no scripts). A single model's batch stream is read by the same script."""
        calls: list[tuple[list[str], list[str | int]]] = []
        for model in self.models:
            keys = [self.keys.jobs(model), self.keys.fair_streams(model), self.keys.fair_state(model)]
            if single:
                keys.append(self.keys.batch_jobs(model))
            calls.append((keys, [CONSUMER_GROUP, self.consumer, count]))
        if self.cluster:
            return [self._fair_read(keys=keys, args=args) for keys, args in calls]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            self._fair_read(keys=keys, args=args, client=pipe)
        return list(pipe.execute())

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
            for model, (reply, streams) in zip(self.models, self._fair_replies(count, single), strict=True):
                self._learn(model, streams)
                items += self._entries(reply, flat_fields=True)
            if not items and not single:
                for _, low_streams in self.read_groups:  # one command per cluster slot (one on a single Redis)
                    reply = self.client.xreadgroup(
                        CONSUMER_GROUP, self.consumer, dict.fromkeys(low_streams, ">"), count=count
                    )
                    items += self._entries(reply, flat_fields=False)
            if items or block_ms is None:
                return items
            # Nothing anywhere: wait for the first job of any kind. Whichever stream wakes the read is the only
            # one served, so an interactive job arriving now is never taken together with a batch's. (A tenant's
            # first job of a model, whose stream is new, waits for the next read: at most block_ms.) Models on
            # several cluster slots are waited on in turn, each for a share of the time.
            streams, low_streams = self.read_groups[self._next_group % len(self.read_groups)]
            self._next_group += 1
            share = max(block_ms // len(self.read_groups), 1) if block_ms else block_ms
            fair = [s for stream in streams for s in self.fair_streams[self.model_of(stream)]]
            reply = self.client.xreadgroup(
                CONSUMER_GROUP,
                self.consumer,
                dict.fromkeys(streams + fair + low_streams, ">"),
                count=count,
                block=share,
            )
            return self._entries(reply, flat_fields=False)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without AOF): recreate and carry on
                self.ensure_groups()
                return []
            raise

    def _entries(self, reply: Any, *, flat_fields: bool) -> list[Delivery | Malformed]:
        """Jobs of an XREADGROUP reply (from a script, whose field lists Redis leaves flat)."""
        out: list[Delivery | Malformed] = []
        for stream_name, entries in reply or []:
            stream = _text(stream_name)
            for entry_id, fields in entries:
                if flat_fields:
                    fields = dict(zip(fields[::2], fields[1::2], strict=True))
                out.append(self._decode(stream, _text(entry_id), fields))
        return out

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
        self.refresh_streams()
        for stream in self.all_streams():  # interactive jobs first
            if len(taken) >= count:
                break
            pending: list[Any] = self.client.xpending_range(
                stream, CONSUMER_GROUP, min="-", max="+", count=max(count * 4, 16), idle=self.claim_min_idle_ms
            )
            owners = sorted({_text(p["consumer"]) for p in pending} - {self.consumer})
            lost, holding = self._lost_owners(owners)
            orphans = [
                p
                for p in pending
                if _text(p["consumer"]) in lost or self._lost_on_its_way(p, holding.get(_text(p["consumer"])))
            ][: count - len(taken)]
            if orphans:
                deliveries = {_text(p["message_id"]): int(p["times_delivered"]) + 1 for p in orphans}
                owner_of = {_text(p["message_id"]): _text(p["consumer"]) for p in orphans}
                claimed: list[Any] = self.client.xclaim(
                    stream, CONSUMER_GROUP, self.consumer, self.claim_min_idle_ms, list(deliveries)
                )
                items: list[Delivery | Malformed] = []
                for entry_id, fields in claimed or []:
                    if fields is None:  # deleted meanwhile (Redis 6 still lists such ids)
                        continue
                    eid = _text(entry_id)
                    items.append(self._decode(stream, eid, fields, attempt=deliveries.get(eid, 1)))
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
        self.refresh_streams()
        pipe = self.client.pipeline(transaction=False)
        for stream in self.all_streams():
            pipe.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=1, consumername=self.consumer)
        return sum(len(reply) for reply in pipe.execute())

    def _lost_on_its_way(self, pending: Any, holding: set[str] | None) -> bool:
        """A live worker's pending entry that it does not run, long after it was delivered (see holding)."""
        if holding is None or _text(pending["message_id"]) in holding:
            return False
        return int(pending["time_since_delivered"]) >= self.lost_delivery_ms

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
        self.refresh_streams()
        for stream in self.all_streams():
            if len(taken) >= count:
                break
            pending: list[Any] = self.client.xpending_range(
                stream,
                CONSUMER_GROUP,
                min="-",
                max="+",
                count=max(count * 4, 16),
                consumername=self.consumer,
                idle=self.claim_min_idle_ms,
            )
            deliveries = {
                _text(p["message_id"]): int(p["times_delivered"]) + 1
                for p in pending
                if (stream, _text(p["message_id"])) not in known
            }
            ids: list[Any] = list(deliveries)[: count - len(taken)]
            if not ids:
                continue
            claimed: list[Any] = self.client.xclaim(stream, CONSUMER_GROUP, self.consumer, self.claim_min_idle_ms, ids)
            for entry_id, fields in claimed or []:
                if fields is not None:
                    eid = _text(entry_id)
                    taken.append(self._decode(stream, eid, fields, attempt=max(deliveries[eid], 2)))
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
        consumers: list[Any] = self.client.xinfo_consumers(stream, CONSUMER_GROUP)
        idle_ones = [
            _text(c["name"]) for c in consumers if int(c["pending"]) == 0 and _text(c["name"]) != self.consumer
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
        self._send(pipe, job.id, Error(seq=0, code=code, message=message, status=status), ended=True)
        pipe.xack(delivery.stream, CONSUMER_GROUP, delivery.entry_id)
        pipe.xdel(delivery.stream, delivery.entry_id)
        pipe.hincrby(self.keys.stats(job.model), "dead", 1)
        pipe.execute(raise_on_error=False)

    @staticmethod
    def _decode(stream: str, entry_id: str, fields: dict[bytes, bytes], attempt: int = 1) -> Delivery | Malformed:
        raw = fields.get(b"job")
        if raw is None:
            return Malformed(stream, entry_id, "entry has no 'job' field", None)
        try:
            job = Job.model_validate_json(raw)
            return Delivery(stream, entry_id, job.model_copy(update={"attempt": attempt}) if attempt > 1 else job)
        except ValidationError as exc:
            job_id = None
            with contextlib.suppress(ValueError, AttributeError):
                job_id = json.loads(raw).get("id")
            return Malformed(stream, entry_id, f"invalid job: {exc.errors()[0]['msg']}", job_id)

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
        """Publish (job id, event) pairs in one round trip, each appended to its job's log first; returns the
        receiver count of each. The logs of the ``ended`` jobs (their last event is among these) get their
        retention time.

        The events of a job in ``owned`` (its stream entry) are fenced: published only while that entry is still
        pending to this worker, in one script per job; when another worker took the job over (or it was
        acknowledged) nothing is published and its events' count is :data:`~broker.eventlog.NOT_OWNER`. A fenced
        append refused for an id already there is the same event sent again (a retried publish), and skipped."""
        if not events:
            return []
        try:
            return self._publish(events, ended, owned or {})
        except NoScriptError:
            # a cluster node that never saw the script (new, failed over, or flushed): load it on every node and
            # send again (appends already there are skipped, and front servers drop an event seen twice)
            self.client.script_load(self._fenced_publish.script)
            return self._publish(events, ended, owned or {})

    def _publish(
        self, events: Sequence[tuple[str, AnyEvent]], ended: Iterable[str], owned: Mapping[str, Delivery | Malformed]
    ) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        last = {job_id: i for i, (job_id, _) in enumerate(events)}
        ended = set(ended)
        positions: dict[int, int] = {}
        fenced: dict[str, list[int]] = {}
        for i, (job_id, event) in enumerate(events):
            if job_id in owned:
                fenced.setdefault(job_id, []).append(i)
            else:
                positions[i] = self._send(pipe, job_id, event, ended=last[job_id] == i and job_id in ended)
        for job_id, indexes in fenced.items():
            position = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack)
            self._send_fenced(pipe, owned[job_id], job_id, [events[i][1] for i in indexes], job_id in ended)
            positions.update(dict.fromkeys(indexes, position))
        replies = pipe.execute(raise_on_error=False)
        missing = next((r for r in replies if isinstance(r, NoScriptError)), None)
        if missing is not None:
            raise missing
        for reply in replies:
            if isinstance(reply, Exception):
                log.warning("an event log append failed: %s", reply)
        return [int(replies[positions[i]]) if not isinstance(replies[positions[i]], Exception) else 0
                for i in range(len(events))]  # fmt: skip

    def _send_fenced(
        self, pipe: Any, entry: Delivery | Malformed, job_id: str, events: Sequence[AnyEvent], ended: bool
    ) -> None:
        """Queue one job's events as one fenced script call (see :data:`broker.eventlog.FENCED_PUBLISH_SCRIPT`)."""
        args: list[Any] = [
            CONSUMER_GROUP,
            entry.entry_id,
            self.consumer,
            self.keys.events(job_id),
            self.event_log_maxlen if self.event_log else "",
            max(int(self.event_log_ttl), 1) if ended else "",
        ]
        for event in events:
            args += [eventlog.entry_id_of(event), event.model_dump_json(exclude_none=True)]
        keys = [entry.stream, self.keys.log(job_id)]
        if self.cluster:  # redis-py refuses EVALSHA in a cluster pipeline by name: a missing script is handled above
            pipe.execute_command("EVALSHA", self._fenced_publish.sha, len(keys), *keys, *args)
        else:
            self._fenced_publish(keys=keys, args=args, client=pipe)

    def _send(self, pipe: Any, job_id: str, event: AnyEvent, *, ended: bool) -> int:
        """Queue one event's log append and PUBLISH on ``pipe``; returns the PUBLISH's position in the reply."""
        payload = event.model_dump_json(exclude_none=True)
        if self.event_log:
            pipe.xadd(
                self.keys.log(job_id),
                {eventlog.EVENT_FIELD: payload},
                id=eventlog.entry_id_of(event),
                maxlen=self.event_log_maxlen,
                approximate=True,
            )
        position = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack)
        if self.cluster:
            pipe.spublish(self.keys.events(job_id), payload)
        else:
            pipe.publish(self.keys.events(job_id), payload)
        if self.event_log and ended:
            pipe.expire(self.keys.log(job_id), max(int(self.event_log_ttl), 1))
        return position

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
            pipe.pexpire(key, eventlog.submission_ttl_ms(deadline, self.event_log_ttl))
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
