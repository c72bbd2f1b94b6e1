"""A worker that comes back after its jobs were taken over publishes nothing more for them (it is fenced), and a
publish that failed is sent again with the same ``seq``s (none is burnt): every request completes correctly.

- A worker SIGSTOPped with 6 non-streaming requests until a second worker has taken half of them over: the second
  continues them; after SIGCONT the first one's stale events for those jobs are refused by Redis, and it
  stops them (before, it went on generating, publishing and completing them beside the second worker).
- A worker's own Redis connection cut for 1 s mid-generation (a proxy between it and Redis): its requests complete.
- A worker's publish of a job's admission (its ``accepted`` event) fails as its connection drops: the events are
  sent again with the same ``seq``s, and the request completes (before, they were dropped after their ``seq`` was
  used, and the request failed with ``event_gap``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from urllib.parse import urlparse

import openai

from tests.faults.conftest import Cluster
from tests.faults.load import PROMPT
from tests.faults.proxy import CuttableProxy

REQUESTS = 6
# what a request ended with: (finish reason, completion tokens, text), or "error <status> <code>"
Answer = tuple[str | None, int | None, str | None] | str


async def _answers(base_url: str, max_tokens: int) -> list[asyncio.Task[Answer]]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)

    async def one() -> Answer:
        try:
            reply = await client.chat.completions.create(
                model="tiny", messages=PROMPT, max_tokens=max_tokens, temperature=0
            )
            usage = reply.usage.completion_tokens if reply.usage else None
            return (reply.choices[0].finish_reason, usage, reply.choices[0].message.content)
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            return f"error {exc.status_code} {body.get('code')}"

    return [asyncio.create_task(one()) for _ in range(REQUESTS)]


async def _reference(base_url: str, max_tokens: int) -> str:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300) as c:
        reply = await c.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content or ""


async def test_a_worker_back_from_a_25_s_stall_publishes_nothing_for_jobs_taken_over(cluster: Cluster) -> None:
    # Long enough that the 6 jobs still run when the stalled worker is stopped (a heartbeat or so after they all
    # started: ~90 tokens in), short enough that the second worker's one-after-another continuation of half of
    # them, the stall's length, stays well inside the worker's 30 s wedge limit on a loaded machine.
    max_tokens = 600
    stalled = cluster.start_worker("worker-a", slots=REQUESTS)
    # One slot: the second worker continues the taken-over jobs one after another, so some are still running on it
    # (and others still left to the stalled one) when the stalled worker comes back.
    second = cluster.start_worker("worker-b", slots=1)
    base_url = cluster.start_api()
    cluster.wait_workers(2)
    reference = await _reference(base_url, max_tokens)
    second.send_signal(signal.SIGSTOP)  # out of the way while the first one takes all 6 jobs
    try:
        cluster.wait_workers(1)
        tasks = await _answers(base_url, max_tokens)
        deadline = time.monotonic() + 180  # a loaded machine starts jobs slowly
        while cluster.running(stalled) < REQUESTS:
            assert time.monotonic() < deadline and not any(t.done() for t in tasks), "one worker never ran all 6 jobs"
            await asyncio.sleep(0.05)
        stalled.send_signal(signal.SIGSTOP)
    finally:
        second.send_signal(signal.SIGCONT)
    try:
        # The stall lasts until the second worker (one slot: it takes a job over once it has room) has taken half
        # the jobs over and still runs one: a fixed 25 s let a fast machine finish all six on the second worker
        # before the first came back, and then the fault tested nothing.
        stalled_at = time.monotonic()
        while not (cluster.stats().get("reclaimed", 0) >= REQUESTS // 2 and cluster.running(second) >= 1):
            assert time.monotonic() - stalled_at < 180, "nothing was taken over: the fault tested nothing"
            await asyncio.sleep(0.1)
        stall = time.monotonic() - stalled_at
        assert not all(t.done() for t in tasks), "every request ended during the stall: the fault tested nothing"
    finally:
        stalled.send_signal(signal.SIGCONT)
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    print(f"\nSIGSTOP {stall:.0f} s: {[r if isinstance(r, str) else r[:2] for r in results]}, stats {cluster.stats()}")
    assert results == [("length", max_tokens, reference)] * REQUESTS
    # Each job ran to its end once: the stalled worker stopped those taken over instead of finishing (and counting,
    # and acknowledging) them a second time beside the worker that continued them.
    stats = cluster.stats()
    assert stats.get("completed") == REQUESTS + 1, stats  # and the reference request
    assert "fenced" in cluster.log_text("worker-a")


async def test_a_one_second_cut_of_a_workers_connection_fails_none_of_its_requests(cluster: Cluster) -> None:
    # Long enough that the jobs still generate through the cut (0.5 s after they all run, for 1 s): on two cores
    # the 6 take several seconds together.
    max_tokens = 800
    target = urlparse(cluster.redis_url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    proxy.start()
    try:
        base_url = cluster.start_api()  # straight to Redis
        direct = cluster.env["QUEUECHAT_REDIS_URL"]
        cluster.env["QUEUECHAT_REDIS_URL"] = proxy.url
        worker = cluster.start_worker("worker", slots=REQUESTS)  # through the proxy
        cluster.env["QUEUECHAT_REDIS_URL"] = direct
        cluster.wait_workers(1)
        reference = await _reference(base_url, max_tokens)
        tasks = await _answers(base_url, max_tokens)
        deadline = time.monotonic() + 180  # a loaded machine starts jobs slowly
        while cluster.running(worker) < REQUESTS:
            assert time.monotonic() < deadline and not any(t.done() for t in tasks), "the jobs never all ran"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # mid-generation
        proxy.sever()
        await asyncio.sleep(1.0)
        proxy.restore()
        assert not all(t.done() for t in tasks), "every request ended before the cut: the fault tested nothing"
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    finally:
        proxy.close()
    print(f"\n1 s cut: {[r if isinstance(r, str) else r[:2] for r in results]}")
    assert results == [("length", max_tokens, reference)] * REQUESTS


async def test_a_failed_admission_publish_burns_no_seq(cluster: Cluster) -> None:
    max_tokens = 64
    # the second admission's publish fails (the first is the reference request's)
    env = {"QCTEST_FAIL_ADMISSION_PUBLISH": "2"}
    cluster.start_worker("worker", slots=REQUESTS, module="tests.faults.hooked_worker", env=env)
    base_url = cluster.start_api()
    cluster.wait_workers(1)
    reference = await _reference(base_url, max_tokens)
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300) as c:
        try:
            reply = await c.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=max_tokens, temperature=0)
        except openai.APIStatusError as exc:
            raise AssertionError(f"the request failed: {exc.status_code} {exc.body}") from None
    assert "injected: the connection dropped" in cluster.log_text("worker"), "the fault tested nothing"
    assert reply.usage is not None and reply.usage.completion_tokens == max_tokens
    assert (reply.choices[0].finish_reason, reply.choices[0].message.content) == ("length", reference)
