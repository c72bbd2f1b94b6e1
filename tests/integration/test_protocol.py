"""The job and event protocol against a real Redis: ordering, load sharing, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from broker.connection import async_client, sync_client
from broker.consumer import Delivery, JobConsumer
from broker.keys import Keys
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Accepted, Delta, Done, FinishReason, Job, JobKind, SamplingParams, Usage
from broker.settings import Settings
from tests.conftest import Stack, wait_for
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)


def _instant_worker(settings: Settings, model: str, stop: threading.Event) -> None:
    """Answers every job the instant it appears: if a front server queued a job before its subscription was
    confirmed, these events would be published to nobody and the job would never finish."""
    keys = Keys(settings.key_prefix)
    assert settings.redis_url
    client = sync_client(settings.redis_url, command_timeout=5)
    consumer = JobConsumer(client, keys, [model], "instant")
    while not stop.is_set():
        items = consumer.read(count=100, block_ms=100)
        events = []
        for item in items:
            assert isinstance(item, Delivery)
            job_id = item.job.id
            events += [
                (job_id, Accepted(seq=0, worker="instant", attempt=1, prompt_tokens=1)),
                (job_id, Delta(seq=1, text="hi", token_ids=[1])),
                (
                    job_id,
                    Done(seq=2, finish_reason=FinishReason.STOP, usage=Usage(prompt_tokens=1, completion_tokens=1)),
                ),
            ]
        consumer.publish(events)
        consumer.ack(items)


@pytest.fixture
async def instant(settings: Settings) -> AsyncIterator[Producer]:
    """A producer in front of a live model ``instant`` whose worker answers every job the moment it appears."""
    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    client = sync_client(settings.redis_url)
    JobConsumer(client, keys, ["instant"], "instant").ensure_groups()
    WorkerRegistration(client, keys, WorkerCard(id="instant", models=["instant"]), ttl=60).heartbeat(WorkerStatus())
    stop = threading.Event()
    thread = threading.Thread(target=_instant_worker, args=(settings, "instant", stop), daemon=True)
    thread.start()
    producer = Producer(async_client(settings.redis_url), settings)
    try:
        yield producer
    finally:
        stop.set()
        thread.join(5)
        await producer.close()


async def event_types(producer: Producer) -> list[str]:
    """Submit one job to ``instant`` and return the types of its events, in order."""
    job = Job(kind=JobKind.COMPLETION, model="instant", prompt="x", deadline=time.time() + 10)
    events = await producer.submit(job)
    try:
        return [type(e).__name__ async for e in events]
    finally:
        events.close()


async def test_subscription_is_confirmed_before_the_job_is_queued(instant: Producer) -> None:
    results = await asyncio.wait_for(asyncio.gather(*(event_types(instant) for _ in range(200))), timeout=30)
    assert all(r == ["Accepted", "Delta", "Done"] for r in results)
    assert instant.router.channels == 0  # every job unsubscribed


def test_two_workers_of_one_model_share_the_load(start_worker, start_api) -> None:
    a = start_worker(limit_worker_concurrency=2)
    b = start_worker(limit_worker_concurrency=2)
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:

            async def one(i: int) -> str:
                body = {"model": "tiny", "prompt": f"job {i}", "max_tokens": 64, "stream": True}
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    async for _ in r.aiter_lines():
                        pass
                return "ok"

            return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(run()) == ["ok"] * 8
    # a worker counts a job just after publishing its last event, so the client can be a moment ahead
    wait_for(lambda: a.worker.totals["completed"] + b.worker.totals["completed"] == 8, timeout=10)
    done_a, done_b = a.worker.totals["completed"], b.worker.totals["completed"]
    assert done_a >= 2 and done_b >= 2, (done_a, done_b)


def test_client_disconnect_stops_the_sequence(stack: Stack, settings: Settings) -> None:
    """A client that leaves mid-stream makes the worker cancel its sequence instead of generating on."""
    assert settings.redis_url
    max_tokens = 2000
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True}
    received = 0
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                received += 1
            if received >= 10:
                break
    worker = stack.worker.worker
    wait_for(lambda: worker.totals["cancelled"] == 1 and not worker.jobs, timeout=10)
    stats = sync_client(settings.redis_url).hgetall(Keys(settings.key_prefix).stats("tiny"))
    generated = int(stats[b"output_tokens"])
    assert int(stats[b"cancelled"]) == 1
    assert b"completed" not in stats
    # the tiny model makes hundreds of tokens a second, so a few steps pass before the disconnect is noticed;
    # what matters is that the sequence stopped long before max_tokens
    assert generated - received < 200, f"{generated - received} tokens generated after the client left"


async def test_producer_reports_worker_error_events(settings: Settings) -> None:
    """An error event ends iteration with JobFailed carrying the worker's status and code."""
    from broker.errors import JobFailed
    from broker.schemas import Error

    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    client = sync_client(settings.redis_url)
    consumer = JobConsumer(client, keys, ["erring"], "w")
    consumer.ensure_groups()
    WorkerRegistration(client, keys, WorkerCard(id="w", models=["erring"]), ttl=60).heartbeat(WorkerStatus())
    producer = Producer(async_client(settings.redis_url), settings)
    try:
        job = Job(kind=JobKind.CHAT, model="erring", messages=[], params=SamplingParams(), deadline=time.time() + 10)
        events = await producer.submit(job)
        (delivery,) = await asyncio.to_thread(consumer.read, 1, 1000)
        consumer.publish([(job.id, Error(seq=0, code="context_length_exceeded", message="too long", status=400))])
        try:
            await events.next_event()
            raise AssertionError("expected JobFailed")
        except JobFailed as exc:
            assert exc.status == 400 and exc.code == "context_length_exceeded"
        events.close()
        consumer.ack([delivery])
        assert client.xlen(keys.jobs("erring")) == 0  # acknowledged entries are deleted: length = backlog
    finally:
        await producer.close()


async def test_event_connection_recovers_after_being_killed(instant: Producer, settings: Settings) -> None:
    """Redis dropping the shared pub/sub connection must not leave the front server deaf: the router reconnects,
    subscribes again and later jobs get their events."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    assert await event_types(instant) == ["Accepted", "Delta", "Done"]
    # only this producer's connection: other processes may share this Redis
    ours = [c for c in client.client_list() if c.get("name") == instant.router.client_name]
    assert ours
    for c in ours:
        client.client_kill_filter(_id=c["id"])

    async def eventually() -> list[str]:
        while True:
            try:
                return await event_types(instant)
            except Exception:  # BrokerUnavailable while reconnecting
                await asyncio.sleep(0.05)

    assert await asyncio.wait_for(eventually(), timeout=10) == ["Accepted", "Delta", "Done"]


def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(redis_url: str, monkeypatch) -> None:
    """More commands at once than the front server's pool has connections: they queue for a connection (the
    plain pool raised "Too many connections" at once)."""
    import broker.connection

    monkeypatch.setattr(broker.connection, "MAX_CONNECTIONS", 2)

    async def burst() -> list[object]:
        client = async_client(redis_url)
        try:  # each BLPOP holds its connection for 50 ms
            return await asyncio.gather(*(client.blpop([f"qc-test-empty-{i}"], timeout=0.05) for i in range(12)))
        finally:
            await client.aclose()

    assert asyncio.run(burst()) == [None] * 12
