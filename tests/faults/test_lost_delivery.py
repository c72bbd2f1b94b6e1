"""The reply of the XREADGROUP that hands a job to a worker is lost (its connection to Redis goes silent longer than
its socket timeout, then is reset): Redis holds the job pending to a live worker that never saw it. The worker
reconciles its pending entries with what it runs, and the job is answered soon after the connection heals, not at
its deadline."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import openai

from tests.faults.conftest import Cluster
from tests.faults.lossy_proxy import LossyProxy

MARK = "a job whose delivery gets lost"
SOCKET_TIMEOUT = 10.0  # the worker's Redis command timeout (workers/main.py)


async def test_a_job_whose_delivery_was_lost_is_answered_after_the_heal(cluster: Cluster) -> None:
    target = urlparse(cluster.redis_url)
    proxy = LossyProxy(
        target.hostname or "127.0.0.1", target.port or 6379, marker=MARK.encode(), hold=SOCKET_TIMEOUT + 2
    )
    proxy.start()
    try:
        cluster.start_worker("worker", env={"QUEUECHAT_REDIS_URL": proxy.url})  # through the proxy
        base_url = cluster.start_api()  # straight to Redis
        cluster.wait_workers(1)
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
        try:
            request = asyncio.create_task(
                client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": MARK}], max_tokens=8, temperature=0
                )
            )
            swallowed = await asyncio.to_thread(proxy.swallowed.wait, 120)
            assert swallowed, "the delivery was never lost: the fault tested nothing"
            # soon after the worker's connection heals (its socket timeout, or the proxy's reset, whichever comes
            # first: on a quiet machine the job can be answered before the proxy resets), bounded generously for a
            # loaded machine; the log line below says it was the lost delivery that the worker took up
            reply = await asyncio.wait_for(request, timeout=90)
        finally:
            await client.close()
    finally:
        proxy.close()
    assert reply.choices[0].finish_reason == "length"
    assert "pending to this worker that it was not running" in cluster.log_text("worker")  # taken up by itself
