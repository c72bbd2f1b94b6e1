"""One request cannot hold a worker to itself: requests sent after a big one are answered while it runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from tests.conftest import ApiServer, RunningWorker, wait_for

BIG_N, BIG_TOKENS = 16, 300


def test_small_requests_are_answered_while_a_big_one_runs(
    start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    """A completion of 16 long choices on a worker of 4 sequences: the 3 small requests sent after it are answered
    before it is half done (it may hold half the worker's sequences; without that bound its 12 waiting choices were
    queued in the engine ahead of them)."""
    running = start_worker(limit_worker_concurrency=4)
    worker = running.worker
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    client = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    big_answered = threading.Event()

    def big() -> None:
        answer = client.completions.create(model="tiny", prompt="Once", n=BIG_N, max_tokens=BIG_TOKENS)
        assert answer.usage is not None and answer.usage.completion_tokens == BIG_N * BIG_TOKENS
        big_answered.set()

    thread = threading.Thread(target=big, daemon=True)
    thread.start()
    big_id = wait_for(lambda: next(iter(worker.jobs), None), timeout=30)

    def small(i: int) -> int:
        answer = client.completions.create(model="tiny", prompt=f"small {i}", max_tokens=4)
        assert answer.usage is not None
        return answer.usage.completion_tokens

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(small, range(3))) == [4, 4, 4]
    big_job = worker.jobs.get(big_id)
    assert not big_answered.is_set() and big_job is not None
    assert big_job.completion_tokens < BIG_N * BIG_TOKENS // 2
    thread.join(300)
    assert big_answered.is_set()
