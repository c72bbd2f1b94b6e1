"""The per-job event log against a real Redis: what a worker appends beside each PUBLISH, and how a front server
fills gaps and reconnects from it instead of failing the job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import httpx
import pytest

from broker import eventlog
from broker.connection import async_client, sync_client
from broker.consumer import Delivery, JobConsumer
from broker.errors import JobFailed
from broker.keys import Keys, log_entry_id, seq_of_log_id
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Accepted, Delta, Done, FinishReason, Job, JobKind, SamplingParams, Usage
from broker.settings import Settings
from tests.conftest import Stack, wait_for

MODEL = "scripted"


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[Producer]:
    """A producer in front of a model whose 'worker' is the test itself (a live card, a consumer group)."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    JobConsumer(client, keys, [MODEL], "scripted").ensure_groups()
    WorkerRegistration(client, keys, WorkerCard(id="scripted", models=[MODEL]), ttl=60).heartbeat(WorkerStatus())
    running = Producer(async_client(settings.redis_url), settings)
    try:
        yield running
    finally:
        await running.close()


def _consumer(settings: Settings) -> JobConsumer:
    assert settings.redis_url
    return JobConsumer(sync_client(settings.redis_url), Keys(settings.key_prefix), [MODEL], "scripted")


def _job(settings: Settings) -> Job:
    return Job(kind=JobKind.COMPLETION, model=MODEL, prompt="hi", params=SamplingParams(max_tokens=4), deadline=9e9)


def _script(job_id: str, words: list[str]) -> list[tuple[str, Accepted | Delta | Done]]:
    events: list[tuple[str, Accepted | Delta | Done]] = [
        (job_id, Accepted(seq=0, worker="scripted", attempt=1, prompt_tokens=1))
    ]
    events += [(job_id, Delta(seq=i + 1, text=w, token_ids=[i])) for i, w in enumerate(words)]
    usage = Usage(prompt_tokens=1, completion_tokens=len(words))
    events.append((job_id, Done(seq=len(words) + 1, finish_reason=FinishReason.LENGTH, usage=usage)))
    return events


async def _texts(events: object) -> str:
    out = []
    async for event in events:  # type: ignore[attr-defined]
        if isinstance(event, Delta):
            out.append(event.text)
    return "".join(out)


def test_log_entry_ids_carry_seq() -> None:
    assert [log_entry_id(s) for s in (0, 1, 41)] == ["1-0", "2-0", "42-0"]
    assert [seq_of_log_id(log_entry_id(s)) for s in (0, 7)] == [0, 7]


async def test_a_worker_logs_every_event_beside_its_publish(stack: Stack, settings: Settings) -> None:
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 6}
    reply = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=30).json()
    job_id = "job-" + reply["id"].removeprefix("cmpl-")
    client = sync_client(settings.redis_url or "")
    key = Keys(settings.key_prefix).log(job_id)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))
    read = eventlog.parse_entries(entries)
    assert read.whole and read.meta is not None and read.meta["model"] == "tiny"
    ids = [e[0].decode() for e in entries[1:]]
    assert ids == [log_entry_id(e.seq) for e in read.events]  # each event at the id of its seq
    assert [e.seq for e in read.events] == list(range(len(read.events)))
    assert isinstance(read.events[0], Accepted) and isinstance(read.events[-1], Done)
    assert "".join(e.text for e in read.events if isinstance(e, Delta)) == reply["choices"][0]["text"]
    # the job has ended: the log now lives the configured time after it, not until the deadline
    assert 0 < client.ttl(key) <= settings.event_log_ttl


async def test_a_gap_in_seq_is_filled_from_the_log(settings: Settings, producer: Producer) -> None:
    events = await producer.submit(_job(settings))
    consumer = _consumer(settings)
    (delivery,) = wait_for(lambda: consumer.read(1, 100), 10)
    assert isinstance(delivery, Delivery)
    script = _script(events.job.id, ["a", "b", "c", "d"])
    consumer.publish(script[:2])
    # seq 2 reaches the log but not the channel (as when a PUBLISH is lost): the front server reads it back
    published = script[2]
    consumer.client.xadd(
        consumer.keys.log(events.job.id),
        {eventlog.EVENT_FIELD: published[1].model_dump_json(exclude_none=True)},
        id=log_entry_id(published[1].seq),
    )
    consumer.publish(script[3:])
    assert await asyncio.wait_for(_texts(events), 10) == "abcd"
    assert events.caught_up >= 1
    events.close()


async def test_duplicates_are_dropped(settings: Settings, producer: Producer) -> None:
    events = await producer.submit(_job(settings))
    consumer = _consumer(settings)
    wait_for(lambda: consumer.read(1, 100), 10)
    script = _script(events.job.id, ["a", "b"])
    consumer.event_log = False  # the log refuses a second append of one seq; the channel still repeats it
    consumer.publish(script[:3] + script[1:3] + script[3:])
    assert await asyncio.wait_for(_texts(events), 10) == "ab"
    events.close()


async def test_a_gap_the_log_cannot_fill_fails_the_job(settings: Settings, producer: Producer) -> None:
    events = await producer.submit(_job(settings))
    consumer = _consumer(settings)
    wait_for(lambda: consumer.read(1, 100), 10)
    script = _script(events.job.id, ["a", "b", "c"])
    consumer.publish(script[:2])
    consumer.client.delete(consumer.keys.log(events.job.id))  # Redis lost it (restarted empty)
    consumer.publish(script[3:])  # seq 2 never arrives
    with pytest.raises(JobFailed) as failed:
        await asyncio.wait_for(_texts(events), 10)
    assert failed.value.code == "events_lost"
    events.close()


async def test_events_published_while_the_connection_is_down_are_read_back(
    settings: Settings, producer: Producer
) -> None:
    """The pub/sub connection is killed and events go out before it is back: none is lost, the job completes."""
    events = await producer.submit(_job(settings))
    consumer = _consumer(settings)
    wait_for(lambda: consumer.read(1, 100), 10)
    words = [f"w{i} " for i in range(20)]
    script = _script(events.job.id, words)
    consumer.publish(script[:3])
    first = [await events.next_event() for _ in range(3)]
    assert [e.seq for e in first] == [0, 1, 2]
    client = consumer.client
    killed = client.client_kill_filter(_type="pubsub")  # every pub/sub connection of this Redis: ours included
    assert killed >= 1
    consumer.publish(script[3:])  # all of it while the connection is re-established
    rest = "".join(e.text for e in first if isinstance(e, Delta)) + await asyncio.wait_for(_texts(events), 20)
    assert rest == "".join(words)
    assert events.caught_up > 0
    events.close()


async def test_a_hung_up_client_marks_its_job_cancelled(settings: Settings, producer: Producer) -> None:
    events = await producer.submit(_job(settings))
    consumer = _consumer(settings)
    wait_for(lambda: consumer.read(1, 100), 10)
    assert consumer.cancelled([events.job.id]) == set()
    events.close()  # before the job's end
    await asyncio.to_thread(wait_for, lambda: consumer.cancelled([events.job.id]), 5)


async def test_info_and_metrics_show_the_logs(stack: Stack, settings: Settings) -> None:
    from broker.monitor import snapshot
    from queuechat.info import render_raw

    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4}
    assert httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=30).status_code == 200
    snap = snapshot(sync_client(settings.redis_url or ""), Keys(settings.key_prefix), with_logs=True)
    assert snap.event_logs >= 1 and snap.event_log_bytes > 0
    assert "1 event logs" in render_raw(snap) or f"{snap.event_logs} event logs" in render_raw(snap)
    metrics = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    assert 'queuechat:jobs_total{model_name="tiny",outcome="continued"}' in metrics
    assert "queuechat:event_log_bytes" in metrics
