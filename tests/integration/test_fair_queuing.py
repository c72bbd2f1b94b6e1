"""Fair queuing within a model, against a real Valkey: the order in which a worker takes jobs when several keys
(tenants) have jobs waiting (deficit round robin by weight), ``priority`` inside a tenant, and a dead worker's jobs
on a tenant's stream taken over like any other."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from api.metrics import BrokerCollector
from broker.connection import async_client, sync_client
from broker.consumer import Delivery, JobConsumer
from broker.jobevents import JobEvents
from broker.keys import Keys
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Job, JobKind
from broker.settings import Settings
from broker.tenants import Tenant, TenantLimits, current_tenant
from tests.conftest import Stack
from tests.openai_error import openai_error

MODEL = "m"


@pytest.fixture
def client(settings: Settings) -> redis.Redis:
    assert settings.redis_url
    return sync_client(settings.redis_url)


@pytest.fixture
async def producer(settings: Settings, client: redis.Redis) -> AsyncIterator[Producer]:
    """A producer in front of model ``m``, whose worker (registered, alive) reads only when a test says so."""
    keys = Keys(settings.key_prefix)
    JobConsumer(client, keys, [MODEL], "reader").ensure_groups()
    WorkerRegistration(client, keys, WorkerCard(id="reader", models=[MODEL]), ttl=60).heartbeat(WorkerStatus())
    running = Producer(async_client(str(settings.redis_url)), settings)
    yield running
    await running.close()


@contextmanager
def as_tenant(name: str | None, weight: int = 1) -> Iterator[None]:
    token = current_tenant.set(None if name is None else Tenant(name=name, limits=TenantLimits(weight=weight)))
    try:
        yield
    finally:
        current_tenant.reset(token)


async def queue(
    producer: Producer, tenant: str | None, count: int, *, weight: int = 1, priority: int = 0, tag: str = ""
) -> list[JobEvents]:
    """Queue ``count`` jobs as ``tenant`` (None: no key); each job's prompt names its tenant (and ``tag``)."""
    submitted = []
    with as_tenant(tenant, weight):
        for i in range(count):
            prompt = f"{tenant or '-'}{tag}:{i}"
            job = Job(kind=JobKind.COMPLETION, model=MODEL, prompt=prompt, priority=priority, deadline=time.time() + 60)
            submitted.append(await producer.submit(job))
    return submitted


def taken_one_at_a_time(consumer: JobConsumer, count: int) -> list[str]:
    """The prompts of the next ``count`` jobs, as a busy worker takes them: one free slot per read."""
    order: list[str] = []
    for _ in range(count):
        items = consumer.read(1, None)
        assert len(items) == 1 and isinstance(items[0], Delivery)
        order.append(str(items[0].job.prompt))
        consumer.ack(items)
    return order


def tenants_of(prompts: list[str]) -> list[str]:
    return [p.split(":")[0] for p in prompts]


async def test_a_burst_of_one_key_does_not_hold_back_another(
    settings: Settings, client: redis.Redis, producer: Producer
) -> None:
    """Tenant A queues 20 jobs, then B queues 2: B's are taken among A's first (turns alternate), not after all
    of A's."""
    reader = JobConsumer(client, Keys(settings.key_prefix), [MODEL], "reader")
    await queue(producer, "a", 20)
    await queue(producer, "b", 2)
    order = tenants_of(taken_one_at_a_time(reader, 22))
    assert order.index("b") <= 2 and order[:4].count("b") == 2
    assert order[4:] == ["a"] * 18


async def test_weights_share_the_worker_between_keys(
    settings: Settings, client: redis.Redis, producer: Producer
) -> None:
    """Weights 2:1 give two of A's jobs for each of B's while both have jobs waiting, over one read at a time and
    over reads of several (the turn and what is left of it are kept between reads)."""
    reader = JobConsumer(client, Keys(settings.key_prefix), [MODEL], "reader")
    await queue(producer, "a", 30, weight=2)
    await queue(producer, "b", 30, weight=1)
    first = tenants_of(taken_one_at_a_time(reader, 15))
    assert (first.count("a"), first.count("b")) == (10, 5)
    several: list[str] = []
    for _ in range(3):
        items = reader.read(4, None)
        several += [str(i.job.prompt) for i in items if isinstance(i, Delivery)]
        reader.ack(items)
    assert (tenants_of(several).count("a"), tenants_of(several).count("b")) == (8, 4)


async def test_priority_orders_the_jobs_of_one_key(settings: Settings, client: redis.Redis, producer: Producer) -> None:
    """Lower priority first within a key, in the order sent among equals; requests without a key too."""
    reader = JobConsumer(client, Keys(settings.key_prefix), [MODEL], "reader")
    for tenant in ("a", None):
        await queue(producer, tenant, 2, priority=5, tag="p5")
        await queue(producer, tenant, 2, priority=0, tag="p0")
        await queue(producer, tenant, 1, priority=-3, tag="n3")
        order = taken_one_at_a_time(reader, 5)
        name = tenant or "-"
        assert order == [f"{name}n3:0", f"{name}p0:0", f"{name}p0:1", f"{name}p5:0", f"{name}p5:1"]


async def test_requests_without_a_key_keep_the_single_stream(
    settings: Settings, client: redis.Redis, producer: Producer
) -> None:
    """With no key and no priority, jobs are queued on the model's one stream as before, and no tenant stream is
    made; once a key queues jobs too, the requests without a key are one tenant among the others."""
    keys = Keys(settings.key_prefix)
    reader = JobConsumer(client, keys, [MODEL], "reader")
    await queue(producer, None, 10)
    assert client.xlen(keys.jobs(MODEL)) == 10 and not client.exists(keys.fair_streams(MODEL))
    await queue(producer, "b", 1)
    order = tenants_of(taken_one_at_a_time(reader, 11))
    assert order.index("b") <= 1


async def test_the_backlog_limit_counts_every_keys_jobs(settings: Settings, producer: Producer) -> None:
    """The model's queue is full for everyone when all tenants' jobs together reach max_queue_len."""
    producer.settings = settings.model_copy(update={"max_queue_len": 5})
    await queue(producer, "a", 3)
    await queue(producer, None, 2)
    from broker.errors import QueueFull

    with pytest.raises(QueueFull):
        await queue(producer, "b", 1)


async def test_a_dead_workers_job_of_a_tenant_stream_is_taken_over(
    settings: Settings, client: redis.Redis, producer: Producer
) -> None:
    """A job read from a tenant's stream by a worker that then died is taken over by a worker that never read
    that stream, with the next attempt."""
    keys = Keys(settings.key_prefix)
    doomed = JobConsumer(client, keys, [MODEL], "doomed", claim_min_idle=0.05)
    WorkerRegistration(client, keys, WorkerCard(id="doomed", models=[MODEL]), ttl=60).heartbeat(WorkerStatus())
    [events] = await queue(producer, "a", 1, priority=2)
    [read] = doomed.read(1, None)
    assert isinstance(read, Delivery) and read.stream == keys.fair_jobs(MODEL, "a", 2)
    client.delete(keys.heartbeat("doomed"))
    time.sleep(0.1)
    survivor = JobConsumer(client, keys, [MODEL], "survivor", claim_min_idle=0.05)
    taken = survivor.reclaim(10).deliveries
    assert [(d.job.id, d.job.attempt) for d in taken if isinstance(d, Delivery)] == [(events.job.id, 2)]
    assert survivor.holding() == 1


@pytest.mark.parametrize(
    ("value", "why"), [(101, "above the range"), (-101, "below the range"), ("high", "a string"), (1.5, "a float")]
)
def test_a_bad_priority_is_refused_by_name(stack: Stack, value: object, why: str) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "priority": value, "max_tokens": 2}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, why
    assert openai_error(r.json()).param == "priority"
    ok = httpx.post(f"{stack.base_url}/v1/chat/completions", json={**body, "priority": -100}, timeout=60)
    assert ok.status_code == 200


async def test_a_stream_whose_listing_cannot_be_read_is_still_served(
    settings: Settings, client: redis.Redis, producer: Producer
) -> None:
    """A tenant stream listed with an entry the read script cannot parse (another version wrote it, or by hand)
    is read all the same, after the jobs without a key: its jobs are never stranded."""
    keys = Keys(settings.key_prefix)
    reader = JobConsumer(client, keys, [MODEL], "reader")
    await queue(producer, "a", 1)
    client.hset(keys.fair_streams(MODEL), keys.fair_jobs(MODEL, "a", 0), "not a tenant entry")
    await queue(producer, None, 1, priority=1)
    assert taken_one_at_a_time(reader, 2) == ["-:0", "a:0"]


async def test_metrics_count_the_waiting_jobs_of_every_key(
    settings: Settings, client: redis.Redis, producer: Producer
) -> None:
    """/metrics' queue depth counts every key's streams, and each key's waiting jobs are a series of their own."""
    await queue(producer, "a", 3)
    await queue(producer, None, 2, priority=1)
    registry = CollectorRegistry()
    registry.register(BrokerCollector(client, Keys(settings.key_prefix)))
    text = generate_latest(registry).decode()
    assert f'queuechat:num_requests_waiting{{model_name="{MODEL}"}} 5.0' in text
    assert f'queuechat:key_requests_waiting{{key_name="a",model_name="{MODEL}"}} 3.0' in text
    assert f'queuechat:key_requests_waiting{{key_name="",model_name="{MODEL}"}} 2.0' in text
