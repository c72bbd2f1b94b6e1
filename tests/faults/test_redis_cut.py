"""The API's connection to Redis is cut for 2 s mid-stream (a proxy between them drops every connection and
refuses new ones): the worker goes on publishing, the API reconnects, reads what it missed from the jobs' logs, and
every stream completes intact."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

import httpx
import openai

from tests.faults.conftest import Cluster
from tests.faults.load import PROMPT
from tests.faults.proxy import CuttableProxy

STREAMS = 8
MAX_TOKENS = 300
CUT_SECONDS = 2.0


async def test_streams_survive_a_two_second_cut_between_api_and_redis(cluster: Cluster) -> None:
    target = urlparse(cluster.redis_url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    proxy.start()
    try:
        cluster.start_worker("worker")  # straight to Redis
        direct = cluster.env["QUEUECHAT_REDIS_URL"]
        cluster.env["QUEUECHAT_REDIS_URL"] = proxy.url
        base_url = cluster.start_api()  # through the proxy
        cluster.env["QUEUECHAT_REDIS_URL"] = direct
        cluster.wait_workers(1)
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        http = httpx.AsyncClient(timeout=120)
        try:
            reply = await client.chat.completions.create(
                model="tiny", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0
            )
            reference = reply.choices[0].message.content
            texts = [""] * STREAMS
            finishes: list[list[str]] = [[] for _ in range(STREAMS)]

            body = {"model": "tiny", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
            raw: list[list[str]] = [[] for _ in range(STREAMS)]

            async def stream(i: int) -> None:
                async with http.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        raw[i].append(line)
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise AssertionError(chunk)
                        for choice in chunk["choices"]:
                            texts[i] += choice["delta"].get("content") or ""
                            if choice["finish_reason"]:
                                finishes[i].append(choice["finish_reason"])

            tasks = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
            while not all(texts) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.01)
            assert not any(t.done() for t in tasks), "a stream ended before the cut"
            at_cut = [len(t) for t in texts]
            proxy.sever()
            await asyncio.sleep(CUT_SECONDS)
            proxy.restore()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=120)
        finally:
            await client.close()
            await http.aclose()
    finally:
        proxy.close()

    print(f"\nRedis cut for {CUT_SECONDS:.0f} s with {STREAMS} streams at {min(at_cut)}-{max(at_cut)} characters")
    assert [r for r in results if r is not None] == []  # no error chunk, no broken stream
    assert finishes == [["length"]] * STREAMS
    assert texts == [reference] * STREAMS
    assert any(len(t) > n for t, n in zip(texts, at_cut, strict=True))
