"""Taking jobs over from dead workers, against a real Redis: only from dead ones, with the attempt counted, and
dead-lettered after ``max_worker_deaths`` deaths."""

from __future__ import annotations

import time

import pytest
import redis

from broker.connection import sync_client
from broker.consumer import Delivery, JobConsumer
from broker.keys import Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Job, JobKind, SamplingParams, parse_event
from broker.settings import Settings

MODEL = "m"


@pytest.fixture
def client(settings: Settings) -> redis.Redis:
    assert settings.redis_url
    return sync_client(settings.redis_url)


def _worker(client: redis.Redis, keys: Keys, name: str, alive: bool = True) -> JobConsumer:
    consumer = JobConsumer(client, keys, [MODEL], name, max_deliveries=3, claim_min_idle=0.05)
    consumer.ensure_groups()
    if alive:
        WorkerRegistration(client, keys, WorkerCard(id=name, models=[MODEL]), ttl=60).heartbeat(WorkerStatus())
    return consumer


def _queue(client: redis.Redis, keys: Keys) -> Job:
    job = Job(kind=JobKind.COMPLETION, model=MODEL, prompt="x", params=SamplingParams(), deadline=time.time() + 60)
    client.xadd(keys.jobs(MODEL), {"job": job.model_dump_json()})
    return job


def test_a_live_workers_long_job_is_never_taken(settings: Settings, client: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    busy, idle = _worker(client, keys, "busy"), _worker(client, keys, "idle")
    _queue(client, keys)
    assert len(busy.read(1, None)) == 1
    time.sleep(0.2)  # far longer idle than claim_min_idle: only the heartbeat protects the job
    assert idle.reclaim(10).deliveries == []


def test_a_dead_workers_job_is_taken_over_with_the_next_attempt(settings: Settings, client: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    doomed, survivor = _worker(client, keys, "doomed"), _worker(client, keys, "survivor")
    job = _queue(client, keys)
    assert len(doomed.read(1, None)) == 1
    client.delete(keys.heartbeat("doomed"))  # its TTL ran out
    time.sleep(0.1)

    taken = survivor.reclaim(10).deliveries
    assert [(d.job.id, d.job.attempt) for d in taken if isinstance(d, Delivery)] == [(job.id, 2)]
    assert survivor.reclaim(10).deliveries == []  # taken once, not twice
    # the dead consumer held nothing more, so it is gone from the group
    names = [c["name"].decode() for c in client.xinfo_consumers(keys.jobs(MODEL), "workers")]
    assert "doomed" not in names


def test_a_job_that_keeps_killing_workers_is_dead_lettered(settings: Settings, client: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    job = _queue(client, keys)
    listener = client.pubsub()
    listener.subscribe(keys.events(job.id))
    listener.get_message(timeout=1)  # the subscribe confirmation

    first = _worker(client, keys, "w0", alive=False)
    assert len(first.read(1, None)) == 1
    for attempt in (2,):  # the new owner dies too: two workers died holding it (max_worker_deaths)
        time.sleep(0.1)
        taker = _worker(client, keys, f"w{attempt}", alive=False)
        taken = taker.reclaim(10).deliveries
        assert [d.job.attempt for d in taken if isinstance(d, Delivery)] == [attempt]
    time.sleep(0.1)
    last = _worker(client, keys, "last")
    outcome = last.reclaim(10)

    assert outcome.deliveries == [] and outcome.dead_lettered == [job.id]
    assert client.xlen(keys.jobs(MODEL)) == 0
    assert client.xlen(keys.dead(MODEL)) == 1
    assert client.hget(keys.stats(MODEL), "dead") == b"1"
    message = listener.get_message(timeout=2)
    assert message is not None
    event = parse_event(message["data"])
    assert event.type == "error" and event.code == "worker_crashed"
    assert event.status == 400
