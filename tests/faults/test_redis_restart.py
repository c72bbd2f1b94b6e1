"""Redis with an append-only file restarted mid-stream: the worker keeps the tokens it could not publish and sends
them once Redis is back, the API reconnects and reads what it missed from the jobs' logs (kept by the AOF), and
every stream completes intact; none hangs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from broker.embedded import EmbeddedValkey
from tests.faults.conftest import Cluster
from tests.faults.load import PROMPT

STREAMS = 4
MAX_TOKENS = 300


async def test_streams_survive_a_restart_of_redis_with_aof(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = EmbeddedValkey(data_dir=tmp_path / "valkey", aof=True)
    server.start()
    cluster = Cluster(server.url, tiny_model_dir, tmp_path)
    try:
        cluster.start_worker("worker")
        base_url = cluster.start_api()
        cluster.wait_workers(1)
        body = {"model": "tiny", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
        texts = [""] * STREAMS
        outcomes: list[str | None] = [None] * STREAMS
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            reference = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]

            async def stream(i: int) -> None:
                async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            outcomes[i] = chunk["error"]["code"]
                        for choice in chunk.get("choices", []):
                            texts[i] += choice["delta"].get("content") or ""
                            if choice["finish_reason"]:
                                outcomes[i] = choice["finish_reason"]

            tasks = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
            while not all(texts) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.01)
            assert not any(t.done() for t in tasks), "a stream ended before the restart"
            server.stop()  # a clean stop: the AOF has everything
            server = EmbeddedValkey(port=server.port, data_dir=tmp_path / "valkey", aof=True)
            server.start()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)  # none hangs
    finally:
        cluster.stop()
        server.stop()

    print(f"\nRedis (AOF) restarted under {STREAMS} streams: outcomes {outcomes}")
    assert outcomes == ["length"] * STREAMS
    assert texts == [reference["content"]] * STREAMS
