"""What the web UI's integration tests share: a producer on the test's Redis, models nobody consumes, a tiny
worker once it is registered, and a reply run to its end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broker.connection import async_client, sync_client
from broker.consumer import JobConsumer
from broker.keys import Keys
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.settings import Settings
from tests.conftest import RunningWorker
from webui.chat import ChatSession, reply


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[Producer]:
    assert settings.redis_url
    producer = Producer(async_client(settings.redis_url), settings)
    try:
        yield producer
    finally:
        await producer.close()


def idle_model(settings: Settings, model: str, *, live: bool) -> JobConsumer:
    """A model whose stream exists but that nobody consumes: with ``live``, a registered worker that never reads
    (its queue only grows); without, a model whose workers are all gone."""
    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    client = sync_client(settings.redis_url)
    consumer = JobConsumer(client, keys, [model], f"{model}-worker")
    consumer.ensure_groups()
    if live:
        card = WorkerCard(id=f"{model}-worker", models=[model], slots=2)
        WorkerRegistration(client, keys, card, ttl=60).heartbeat(WorkerStatus())
    return consumer


async def started(
    start_worker: Callable[..., RunningWorker], producer: Producer, names: str = "tiny", **options: Any
) -> RunningWorker:
    """A tiny worker, once the registry lists it."""
    running = start_worker(names, **options)
    deadline = time.monotonic() + 30
    while not set(names.split(",")) <= set(await producer.live_models()):
        assert time.monotonic() < deadline, "the worker did not register"
        await asyncio.sleep(0.05)
    return running


async def answer(session: ChatSession, producer: Producer) -> None:
    async for _ in reply(session, producer, timeout=60):
        pass
