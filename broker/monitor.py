"""A read-only snapshot of the queues and the workers, for ``queuechat info`` and the metrics endpoints.

Reading never writes: expired worker cards are left for the workers and front servers to prune, so a monitoring
account needs only read commands. A snapshot costs three round trips whatever the number of models: the registry
and Redis' clock, then every stream's group, length and counters, then the oldest waiting entry of the streams
that have a backlog (one more, before it, for the API keys' own streams when there are any: broker/fairness.py).
Ages are measured against Redis' clock (stream ids are Redis timestamps), so the monitor's own clock does not
matter; heartbeat ages compare the worker's clock with Redis' and assume the hosts keep time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import redis
from pydantic import BaseModel, Field, computed_field

from broker.batches import BatchProgress, batch_progress
from broker.connection import is_cluster
from broker.decode import int_map, stream_load, text
from broker.fairness import tenant_of_entry
from broker.keys import Keys
from broker.registry import LiveWorker, heartbeat_keys, split_registry
from broker.tenants import usage_by_name
from broker.waiting import job_tokens

# The fields of {p}:stats:{model} shown per model; a field nobody has counted yet reads as 0.
STAT_FIELDS = (
    "completed",
    "failed",
    "cancelled",
    "expired",
    "dead",
    "reclaimed",
    "continued",
    "prompt_tokens",
    "output_tokens",
)
# Waiting jobs read to estimate their tokens; past this many, the total is extrapolated from the first ones.
WAITING_SAMPLE = 256
# Event logs whose memory is read one by one; past this many, the total is estimated from a sample of this size.
LOG_MEMORY_SAMPLE = 500


class QueueInfo(BaseModel):
    """One model's stream: its backlog now and its counters since the stats hash was created."""

    model: str
    waiting: int = 0  # entries not yet delivered to any worker (the group's lag)
    running: int = 0  # delivered and not yet acknowledged (the group's pending entries)
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    dead: int = 0  # dead-lettered: the larger of the counter and the dead-letter stream's length
    reclaimed: int = 0
    continued: int = 0  # taken over from a dead or stopped worker and continued mid-stream
    prompt_tokens: int = 0
    output_tokens: int = 0
    oldest_waiting_s: float | None = None  # age of the oldest undelivered job; None when nothing waits
    # estimated tokens of the undelivered jobs (broker/waiting.py), from the first WAITING_SAMPLE of them
    waiting_tokens: int = 0
    tokens_per_s: float = 0.0  # sum of the live workers' rates (each over its last seconds) for this model
    workers: int = 0  # live workers serving this model
    slots: int = 0  # their slots together
    # waiting jobs by API key name ("": requests without a key), once keys have streams of their own (fair queuing)
    waiting_by_key: dict[str, int] = Field(default_factory=dict)


class KeyInfo(BaseModel):
    """One API key's usage totals (broker/tenants.py) and its jobs waiting now, over every model."""

    name: str
    requests: int = 0
    rejected: int = 0  # refused by one of its limits (429)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    waiting: int = 0


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    models: list[str]
    state: str  # idle | busy | draining | wedged (its engine stopped making progress)
    running: int
    slots: int
    completed: int
    failed: int
    heartbeat_age_s: float
    tokens_per_s: float
    device: str
    version: str
    uptime_s: float


class Snapshot(BaseModel):
    updated: float  # this machine's clock, for the "Updated:" line
    queues: list[QueueInfo]
    workers: list[WorkerInfo]
    batches: list[BatchProgress] = Field(default_factory=list)  # the newest batches of the Batch API
    keys: list[KeyInfo] = Field(default_factory=list)  # the API keys kept in Redis, by name
    event_logs: int = 0  # jobs' event logs in Redis now (running jobs, and ended ones within their retention)
    event_log_bytes: int = 0  # their memory, by MEMORY USAGE (estimated from a sample when there are many)

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented way to serialise a property
    @property
    def waiting(self) -> int:
        return sum(q.waiting for q in self.queues)

    def workers_of(self, model: str) -> list[WorkerInfo]:
        return [w for w in self.workers if model in w.models]


def _stream_ms(entry_id: bytes | str) -> int:
    return int(text(entry_id).partition("-")[0])


def worker_info(worker: LiveWorker, now: float) -> WorkerInfo:
    card, status = worker.card, worker.status
    return WorkerInfo(
        id=card.id,
        host=card.host,
        pid=card.pid,
        models=card.models,
        state=status.state,
        running=status.running,
        slots=card.slots,
        completed=status.completed,
        failed=status.failed,
        heartbeat_age_s=round(max(now - status.at, 0.0), 3),
        tokens_per_s=status.tokens_per_s,
        device=card.device,
        version=card.version,
        uptime_s=round(max(now - card.started, 0.0), 1),
    )


def known_models(client: redis.Redis, keys: Keys) -> list[str]:
    """Every model with a job stream (workers create it when they start serving the model)."""
    return sorted({keys.model_of_jobs(k) for k in client.scan_iter(match=keys.jobs_pattern(), count=1000)})


def snapshot(
    client: redis.Redis,
    keys: Keys,
    models: Sequence[str] = (),
    *,
    with_queues: bool = True,
    with_batches: bool = False,
    with_logs: bool = False,
    with_keys: bool = False,
    known: Sequence[str] | None = None,
) -> Snapshot:
    """Queues and workers as they are now. ``models`` limits both to those models (a named model that does not
    exist shows as an empty queue); without it every known or served model is listed. ``known`` replaces the
    SCAN for job streams with a list the caller keeps (the metrics scrape refreshes it now and then). Raises redis
    errors."""
    if is_cluster(client):  # a cluster pipeline takes no keyless command (TIME): two round trips there
        (seconds, micros), cards = client.time(), client.hgetall(keys.workers)
    else:
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(keys.workers)
        (seconds, micros), cards = pipe.execute()
    now = seconds + micros / 1e6
    live, _expired = split_registry(cards, client.mget(heartbeat_keys(keys, cards)) if cards else [])
    workers = sorted((worker_info(w, now) for w in live), key=lambda w: w.id)

    names = list(dict.fromkeys(models))
    if not names:
        streams = known_models(client, keys) if known is None else known
        names = sorted(set(streams) | {m for w in workers for m in w.models})
    if models:
        workers = [w for w in workers if set(w.models) & set(names)]
    queues = _queues(client, keys, names, workers, now) if with_queues else []
    batches = batch_progress(client, keys, limit=10) if with_batches and not models else []
    logs, log_bytes = log_memory(client, keys) if with_logs and not models else (0, 0)
    return Snapshot(
        updated=time.time(),
        queues=queues,
        workers=workers,
        batches=batches,
        keys=key_infos(client, keys, queues) if with_keys else [],
        event_logs=logs,
        event_log_bytes=log_bytes,
    )


def key_infos(client: redis.Redis, keys: Keys, queues: Sequence[QueueInfo]) -> list[KeyInfo]:
    """Every API key's usage, with its waiting jobs in these queues (two round trips)."""
    infos = []
    for name, usage in usage_by_name(client, keys).items():
        fields = {k: v for k, v in usage.items() if k in KeyInfo.model_fields}
        waiting = sum(q.waiting_by_key.get(name, 0) for q in queues)
        infos.append(KeyInfo(name=name, **fields, waiting=waiting))
    return infos


def log_memory(client: redis.Redis, keys: Keys, sample: int = LOG_MEMORY_SAMPLE) -> tuple[int, int]:
    """How many event logs there are and the memory they take (MEMORY USAGE of each, or of a sample)."""
    names = list(client.scan_iter(match=keys.logs_pattern(), count=1000))
    if not names:
        return 0, 0
    measured = names if len(names) <= sample else random.sample(names, sample)
    pipe = client.pipeline(transaction=False)
    for name in measured:
        pipe.memory_usage(name)
    sizes = [int(n) for n in pipe.execute(raise_on_error=False) if isinstance(n, int)]
    if not sizes:
        return len(names), 0
    return len(names), round(sum(sizes) / len(sizes) * len(names))


def _queues(
    client: redis.Redis, keys: Keys, names: list[str], workers: list[WorkerInfo], now: float
) -> list[QueueInfo]:
    pipe = client.pipeline(transaction=False)
    for model in names:
        pipe.xinfo_groups(keys.jobs(model))
        pipe.xlen(keys.jobs(model))
        pipe.hgetall(keys.stats(model))
        pipe.xlen(keys.dead(model))
        pipe.hgetall(keys.fair_streams(model))
    replies = pipe.execute(raise_on_error=False)  # a model without a stream answers XINFO with an error
    queues: list[QueueInfo] = []
    backlog: list[tuple[QueueInfo, str, str]] = []  # (queue, stream, the group's last delivered id)
    fair: list[tuple[QueueInfo, str, tuple[str, int]]] = []  # the keys' own streams: (queue, stream, (key, prio))
    for i, model in enumerate(names):
        groups, length, stats, dead_len, registry = replies[5 * i : 5 * i + 5]
        counts = {k: v for k, v in int_map(stats).items() if k in STAT_FIELDS}
        serving = [w for w in workers if model in w.models]
        counted: dict[str, Any] = {**counts, "dead": max(counts.get("dead", 0), int(dead_len or 0))}
        queue = QueueInfo(
            model=model,
            **counted,
            tokens_per_s=round(sum(w.tokens_per_s for w in serving), 2),
            workers=len(serving),
            slots=sum(w.slots for w in serving),
        )
        load = stream_load(groups, length)  # without a group, nobody has consumed from it yet: all of it waits
        queue.running, queue.waiting = load.running, load.waiting
        if queue.waiting:
            backlog.append((queue, keys.jobs(model), load.last_delivered))
        if isinstance(registry, dict) and registry:
            queue.waiting_by_key[""] = queue.waiting
            fair += [(queue, text(stream), tenant_of_entry(entry)) for stream, entry in registry.items()]
        queues.append(queue)
    if fair:
        backlog += _fair_streams(client, fair)
    if backlog:
        pipe = client.pipeline(transaction=False)
        for _, stream, last in backlog:
            pipe.xrange(stream, f"({last}", "+", count=WAITING_SAMPLE)  # the undelivered entries
        sampled: dict[str, tuple[QueueInfo, int, int]] = {}  # model -> its queue, entries sampled, their tokens
        for (queue, _, _), entries in zip(backlog, pipe.execute(), strict=True):
            if entries:
                age_s = round(max(now - _stream_ms(entries[0][0]) / 1000, 0.0), 3)
                queue.oldest_waiting_s = max(queue.oldest_waiting_s or 0.0, age_s)
                _, count, tokens = sampled.get(queue.model, (queue, 0, 0))
                tokens += sum(job_tokens(fields.get(b"job")) for _, fields in entries)
                sampled[queue.model] = (queue, count + len(entries), tokens)
        for queue, count, tokens in sampled.values():
            queue.waiting_tokens = round(tokens * max(queue.waiting, count) / count)
    return queues


def _fair_streams(
    client: redis.Redis, fair: list[tuple[QueueInfo, str, tuple[str, int]]]
) -> list[tuple[QueueInfo, str, str]]:
    """Add the keys' own streams (see broker/fairness.py) to their models' counts, by key; those with jobs
    waiting, with their groups' last delivered ids."""
    pipe = client.pipeline(transaction=False)
    for _, stream, _ in fair:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
    replies = pipe.execute(raise_on_error=False)
    backlog: list[tuple[QueueInfo, str, str]] = []
    for i, (queue, stream, (name, _)) in enumerate(fair):
        groups, length = replies[2 * i : 2 * i + 2]
        load = stream_load(groups, length)
        if not load.grouped:
            continue
        queue.running += load.running
        queue.waiting += load.waiting
        queue.waiting_by_key[name] = queue.waiting_by_key.get(name, 0) + load.waiting
        if load.waiting:
            backlog.append((queue, stream, load.last_delivered))
    return backlog
