"""Who takes a live worker's pending entry, against a real Redis: nobody while the worker says it runs it; another
worker once it has long been pending to a live worker that does not (its delivery was lost on the way); and the
worker itself, reconciling its own entries with what it runs."""

from __future__ import annotations

import time

import redis

from broker.connection import sync_client
from broker.consumer import Delivery, JobConsumer
from broker.keys import Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Job, JobKind, SamplingParams
from broker.settings import Settings

MODEL = "m"
TTL = 0.1  # the heartbeat TTL the consumers assume: an entry pending twice that long counts as lost


def _worker(client: redis.Redis, keys: Keys, name: str, holding: list[str] | None) -> JobConsumer:
    consumer = JobConsumer(client, keys, [MODEL], name, claim_min_idle=0.05, heartbeat_ttl=TTL)
    consumer.ensure_groups()
    _beat(client, keys, name, holding)
    return consumer


def _beat(client: redis.Redis, keys: Keys, name: str, holding: list[str] | None) -> None:
    card = WorkerCard(id=name, models=[MODEL])
    WorkerRegistration(client, keys, card, ttl=60).heartbeat(WorkerStatus(holding=holding))


def _queue(client: redis.Redis, keys: Keys) -> Job:
    job = Job(kind=JobKind.COMPLETION, model=MODEL, prompt="x", params=SamplingParams(), deadline=time.time() + 60)
    client.xadd(keys.jobs(MODEL), {"job": job.model_dump_json()})
    return job


def test_a_live_workers_lost_delivery_is_taken_over_but_never_what_it_runs(settings: Settings) -> None:
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    owner, other = _worker(client, keys, "owner", holding=[]), _worker(client, keys, "other", holding=[])
    job = _queue(client, keys)
    [delivery] = owner.read(1, None)
    assert isinstance(delivery, Delivery)
    _beat(client, keys, "owner", holding=[delivery.entry_id])  # it runs the job
    time.sleep(4 * TTL)
    assert other.reclaim(10).deliveries == []  # a live owner's running job: never taken however long it runs

    _beat(client, keys, "owner", holding=[])  # alive, and it does not run the job: its delivery was lost
    taken = other.reclaim(10).deliveries
    assert [(d.job.id, d.job.attempt) for d in taken if isinstance(d, Delivery)] == [(job.id, 2)]
    assert client.get(keys.deaths(job.id)) is None  # its owner did not die of it


def test_a_worker_takes_up_what_was_delivered_to_it_unseen(settings: Settings) -> None:
    """Entries pending to a worker that it does not run come back to it with the next attempt, so that it reads
    their logs (a finished one is then acknowledged: tests/integration/test_phantom_pending.py; the others
    continued)."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    worker = _worker(client, keys, "w", holding=[])
    lost, ended = _queue(client, keys), _queue(client, keys)
    read = worker.read(2, None)  # as if the reply of this read never arrived for the first entry
    ids = {d.job.id: d.entry_id for d in read if isinstance(d, Delivery)}
    time.sleep(0.1)  # past claim_min_idle
    stream = keys.jobs(MODEL)
    found = worker.strays(known={(stream, ids[ended.id])}, count=10)  # it runs (or still acknowledges) the other
    assert [(d.job.id, d.job.attempt) for d in found if isinstance(d, Delivery)] == [(lost.id, 2)]
    time.sleep(0.1)
    assert worker.strays(known={(stream, i) for i in ids.values()}, count=10) == []  # it runs both: nothing to do
