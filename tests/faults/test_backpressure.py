"""A queue over its limit answers 429 with Retry-After at once, and admits nothing beyond the limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from broker.connection import sync_client
from tests.faults.conftest import Cluster
from tests.faults.load import PROMPT

LIMIT = 8
BURST = 30


async def test_queue_limit_refuses_the_rest_at_once(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    cluster = Cluster(redis_url, tiny_model_dir, tmp_path, max_queue_len=LIMIT)
    try:
        # One slot and answers too long to finish during the burst: whatever is admitted stays in the queue.
        cluster.start_worker("worker", slots=1)
        base_url = cluster.start_api()
        cluster.wait_workers(1)
        body = {"model": "tiny", "messages": PROMPT, "max_tokens": 3000}
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            requests = [asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(BURST)]
            refused: list[httpx.Response] = []
            while len(refused) < BURST - LIMIT and not all(r.done() for r in requests):
                done = [r for r in requests if r.done()]
                refused = [r.result() for r in done if r.result().status_code == 429]
                await asyncio.sleep(0.02)
            backlog = sync_client(redis_url).xlen(cluster.keys.jobs("tiny"))
            waiting = [r for r in requests if not r.done()]
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)

        assert len(refused) == BURST - LIMIT
        assert len(waiting) == LIMIT  # the admitted ones are still queued or running
        assert backlog == LIMIT
        for response in refused:
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
    finally:
        cluster.stop()
