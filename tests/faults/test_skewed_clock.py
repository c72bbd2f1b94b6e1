"""Workers whose wall clocks disagree with the API's (Debian's libfaketime, preloaded into the worker process only):
deadlines are budgets measured on Redis's clock, so a worker two minutes ahead does not answer 504 to requests well
within their 100 s timeout, and one two minutes behind still ends a job whose time is up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import openai
import pytest

from broker.connection import sync_client
from broker.schemas import Job, JobKind, SamplingParams
from tests.faults.conftest import Cluster, until
from tests.faults.load import PROMPT

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs Debian's faketime (apt-get install faketime)")


def skewed(offset: str) -> dict[str, str]:
    """The environment of a process whose wall clock is ``offset`` ("+120s", "-120s") off; its monotonic clock is
    left alone, as a real host's would be."""
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def test_a_worker_two_minutes_ahead_answers_within_the_timeout(cluster: Cluster) -> None:
    cluster.env["QUEUECHAT_REQUEST_TIMEOUT"] = "100"
    worker = cluster.start_worker("worker", env=skewed("+120s"))
    base_url = cluster.start_api()
    cluster.wait_workers(1)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=90)
    try:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=16, temperature=0)
                for _ in range(4)
            )
        )
    finally:
        await client.close()
    assert [r.choices[0].finish_reason for r in replies] == ["length"] * 4  # none 504
    assert worker.poll() is None
    assert cluster.stats().get("expired", 0) == 0


def test_a_worker_two_minutes_behind_still_ends_an_expired_job(cluster: Cluster) -> None:
    cluster.start_worker("worker", env=skewed("-120s"))
    cluster.wait_workers(1)
    client = sync_client(cluster.redis_url)
    now = time.time()
    job = Job(
        kind=JobKind.COMPLETION,
        model="tiny",
        prompt="Tell me a long story about queues.",
        params=SamplingParams(max_tokens=3000, temperature=0.0),
        created=now,
        deadline=now + 1.0,  # a one second budget: far shorter than 3000 tokens take
    )
    listener = client.pubsub()
    listener.subscribe(cluster.keys.events(job.id))  # its client listens: the job is not cancelled for want of one
    client.xadd(cluster.keys.jobs("tiny"), {"job": job.model_dump_json()})
    ends: list[dict[str, object]] = []

    def ended() -> bool:
        message = listener.get_message(timeout=0.1)
        if message and message["type"] == "message":
            event = json.loads(message["data"])
            if event.get("type") in ("error", "done"):
                ends.append(event)
        return bool(ends)

    until(ended, timeout=120)
    listener.close()
    assert ends, "the job never ended"
    assert ends[0].get("type") == "error" and ends[0].get("code") == "timeout", ends[0]
    assert cluster.stats().get("expired", 0) == 1
