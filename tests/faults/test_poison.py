"""Jobs a front server would never send (they bypass its validation) fail alone: the worker keeps serving, and the
jobs beside them complete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker.connection import async_client, sync_client
from broker.errors import JobFailed
from broker.keys import Keys
from broker.producer import Producer
from broker.registry import live_workers
from broker.schemas import Delta, Job, JobKind, SamplingParams
from broker.settings import Settings
from tests.conftest import RunningWorker, wait_for


def _job(**params: object) -> Job:
    prompt: str | list[int] = params.pop("prompt", "tell me")  # type: ignore[assignment]
    return Job(
        kind=JobKind.COMPLETION,
        model="tiny",
        prompt=prompt,
        params=SamplingParams(max_tokens=8, **params),
        deadline=time.time() + 60,
    )


async def _outcome(producer: Producer, job: Job) -> str:
    try:
        async with await producer.submit(job) as events:
            text = "".join([e.text async for e in events if isinstance(e, Delta)])
        return "answered" if text else "empty"
    except JobFailed as exc:
        return f"error:{exc.code}"


async def test_poison_jobs_fail_alone(settings: Settings, start_worker: Callable[..., RunningWorker]) -> None:
    running = start_worker()
    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    wait_for(lambda: live_workers(sync_client(str(settings.redis_url)), keys))  # registered: the model is served
    producer = Producer(async_client(settings.redis_url), settings)
    try:
        # Not JSON at all, and JSON that is not a job: acknowledged and counted, never run.
        raw = sync_client(settings.redis_url)
        stream = Keys(settings.key_prefix).jobs("tiny")
        raw.xadd(stream, {"job": b"\xff not json"})
        raw.xadd(stream, {"something": "else"})
        poison = [
            _job(seed=2**70, temperature=1.0),  # beyond any generator's seed range
            _job(prompt=[10**9]),  # outside the vocabulary
            _job(prompt=[]),  # nothing to continue
            _job(stop_token_ids=[-7]),
        ]
        healthy = [_job(temperature=0.0) for _ in range(4)]
        outcomes = await asyncio.gather(*(_outcome(producer, j) for j in poison + healthy))
    finally:
        await producer.close()

    assert outcomes[len(poison) :] == ["answered"] * len(healthy)
    for outcome in outcomes[: len(poison)]:
        assert outcome == "answered" or outcome.startswith("error:"), outcome
    assert running.thread.is_alive()
    assert running.worker.totals["failed"] >= 4  # two malformed entries, two prompts it cannot run
