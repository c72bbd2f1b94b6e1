"""A job that kills every worker that starts it (as a prompt that runs them out of memory would) is dead-lettered
after ``QUEUECHAT_MAX_WORKER_DEATHS`` (2) workers died holding it: its client gets 400 ``worker_crashed``, the
third worker lives on, and the other requests are served before, while and after."""

from __future__ import annotations

import asyncio
import signal

import openai

from tests.faults.conftest import Cluster, until
from tests.faults.load import PROMPT

MARK = "this-request-kills-its-worker"


async def test_a_job_that_kills_its_workers_is_dead_lettered_after_two_deaths(cluster: Cluster) -> None:
    hooks = {"QCTEST_CRASH_MARK": MARK}
    workers = [cluster.start_worker(f"worker-{n}", module="tests.faults.hooked_worker", env=hooks) for n in range(3)]
    base_url = cluster.start_api()
    cluster.wait_workers(3)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def healthy() -> str:
        try:
            reply = await client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=8, temperature=0)
            return reply.choices[0].finish_reason or "no finish reason"
        except openai.APIStatusError as exc:  # an explicit error: allowed while workers die under the request
            return f"error {exc.status_code}"

    try:
        poison = asyncio.create_task(
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": MARK}], max_tokens=8, temperature=0
            )
        )
        during: list[str] = []
        while not poison.done():
            during += await asyncio.gather(*(healthy() for _ in range(4)))
        error = poison.exception()
        after = await asyncio.gather(*(healthy() for _ in range(8)))
    finally:
        await client.close()

    until(lambda: sum(w.poll() is not None for w in workers) >= 2, timeout=10)
    died = [w.returncode for w in workers if w.poll() is not None]
    print(f"\na crashing job: {len(died)} workers died ({died}); {len(during)} requests meanwhile: {set(during)}")
    assert isinstance(error, openai.BadRequestError), error
    assert isinstance(error.body, dict) and error.body.get("code") == "worker_crashed", error.body
    assert died == [-signal.SIGKILL] * 2  # two deaths, then it was set aside: the third worker never ran it
    assert len(cluster.live()) == 1
    assert after == ["length"] * 8
    assert during and all(o in ("length", "error 400") for o in during), during
    assert cluster.stats().get("dead", 0) >= 1
