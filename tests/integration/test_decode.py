"""The reply parsers that every reader of a record shares (broker/decode.py), against a real Redis: the sync and
async registry readers answer alike, and a stream's load reads the same whatever its state."""

from __future__ import annotations

from typing import Any

import redis

from broker.connection import async_client, sync_client
from broker.decode import entry_fields, pending_entries, stream_load
from broker.keys import CONSUMER_GROUP, Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus, live_workers, live_workers_async
from broker.settings import Settings


def _registry(settings: Settings) -> tuple[redis.Redis, Keys]:
    assert settings.redis_url
    client, keys = sync_client(settings.redis_url), Keys(settings.key_prefix)
    WorkerRegistration(client, keys, WorkerCard(id="alive", models=["m"]), ttl=60).heartbeat(WorkerStatus(running=2))
    client.hset(keys.workers, "gone", WorkerCard(id="gone", models=["m"]).model_dump_json())  # no heartbeat
    return client, keys


def test_the_sync_registry_reader_answers_the_live_workers_and_prunes_the_dead(settings: Settings) -> None:
    client, keys = _registry(settings)
    (worker,) = live_workers(client, keys)
    assert (worker.card.id, worker.status.running) == ("alive", 2)
    assert set(client.hkeys(keys.workers)) == {b"alive"}


async def test_the_async_registry_reader_answers_as_the_sync_one(settings: Settings) -> None:
    client, keys = _registry(settings)
    assert settings.redis_url
    front = async_client(settings.redis_url)
    try:
        (worker,) = await live_workers_async(front, keys)
    finally:
        await front.aclose()
    assert worker == live_workers(client, keys)[0]
    assert set(client.hkeys(keys.workers)) == {b"alive"}


def _load(client: redis.Redis, stream: str) -> tuple[bool, int, int]:
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(stream)
    pipe.xlen(stream)
    load = stream_load(*pipe.execute(raise_on_error=False))
    return load.grouped, load.running, load.waiting


def test_a_streams_load_reads_alike_without_a_stream_without_a_group_and_with_one(settings: Settings) -> None:
    assert settings.redis_url
    client, stream = sync_client(settings.redis_url), Keys(settings.key_prefix).jobs("load")
    assert _load(client, stream) == (False, 0, 0)  # no stream: XINFO answers an error
    for n in range(3):
        client.xadd(stream, {"job": str(n)})
    assert _load(client, stream) == (False, 0, 3)  # nobody consumed from it yet: all of it waits
    client.xgroup_create(stream, CONSUMER_GROUP, id="0")
    read: Any = client.xreadgroup(CONSUMER_GROUP, "w", {stream: ">"}, count=1)  # redis-py types it loosely
    ((_, [(entry_id, fields)]),) = read
    assert _load(client, stream) == (True, 1, 2)
    assert entry_fields(fields) == {"job": b"0"} == entry_fields([b"job", b"0"])  # a client's reply, a script's
    (pending,) = pending_entries(client.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=10))
    assert (pending.entry_id, pending.consumer, pending.deliveries) == (entry_id.decode(), "w", 1)
