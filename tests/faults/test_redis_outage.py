"""Redis goes away for 10 s under load and comes back empty: requests sent in the gap get a 503 at once (never a
hang), requests in flight when it went away wait for it and then end with an answer or a 503 (their event logs are
gone), and the same worker and API processes serve again by themselves."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from broker.embedded import EmbeddedValkey
from tests.faults.conftest import Cluster
from tests.faults.load import PROMPT

OUTAGE_SECONDS = 10.0


@dataclass
class Call:
    started: float
    ended: float
    status: int | str  # HTTP status, or the name of the exception when no response came
    error: str = ""  # the error body's message, so a failed assertion says why


async def _keep_asking(client: httpx.AsyncClient, calls: list[Call], stop: asyncio.Event) -> None:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 16}
    while not stop.is_set():
        started = time.monotonic()
        error = ""
        try:
            response = await client.post("/v1/chat/completions", json=body)
            status: int | str = response.status_code
            if status != 200:
                error = response.text[:300]
        except httpx.HTTPError as exc:
            status, error = type(exc).__name__, str(exc)
        calls.append(Call(started, time.monotonic(), status, error))
        await asyncio.sleep(0.05)


async def test_redis_outage_then_recovery(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = EmbeddedValkey(data_dir=tmp_path / "valkey")
    server.start()
    cluster = Cluster(server.url, tiny_model_dir, tmp_path)
    try:
        worker = cluster.start_worker("worker")
        base_url = cluster.start_api()
        api = next(p for p in cluster.processes if "api" in list(p.args))
        cluster.wait_workers(1)

        calls: list[Call] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            askers = [asyncio.create_task(_keep_asking(client, calls, stop)) for _ in range(4)]
            # Redis goes down once the system has answered a few (not after a fixed time: on a loaded machine the
            # first answers, warm-up included, can take longer than any fixed wait)
            served_by = time.monotonic() + 60
            while sum(c.status == 200 for c in calls) < 4:
                assert time.monotonic() < served_by, f"no answers before the outage: {calls[:3]}"
                await asyncio.sleep(0.1)
            down_at = time.monotonic()
            server.stop()
            # the askers' requests in flight now wait for Redis (up to the outage grace): these ask anew meanwhile
            askers += [asyncio.create_task(_keep_asking(client, calls, stop)) for _ in range(2)]
            await asyncio.sleep(OUTAGE_SECONDS)
            server = EmbeddedValkey(port=server.port, data_dir=tmp_path / "valkey")
            server.start()
            up_at = time.monotonic()
            while not any(c.started > up_at and c.status == 200 for c in calls):
                assert time.monotonic() - up_at < 60, "no recovery within 60 s of Redis returning"
                await asyncio.sleep(0.1)
            recovered_at = min(c.ended for c in calls if c.started > up_at and c.status == 200)
            await asyncio.sleep(3)
            stop.set()
            await asyncio.gather(*askers)

        before = [c for c in calls if c.ended < down_at]
        during = [c for c in calls if down_at < c.started and c.ended < up_at]
        after = [c for c in calls if c.started > recovered_at]
        print(
            f"\nRedis outage of {OUTAGE_SECONDS:.0f} s: {len(during)} requests during it, statuses "
            f"{sorted({c.status for c in during}, key=str)}, slowest answer "
            f"{max(c.ended - c.started for c in during) * 1000:.0f} ms; service back "
            f"{recovered_at - up_at:.2f} s after Redis; {len(after)} requests after, statuses "
            f"{sorted({c.status for c in after}, key=str)}"
        )
        straddling = [c for c in calls if c.started < down_at < c.ended]
        assert before and all(c.status == 200 for c in before)
        assert all(c.status in (200, 503) for c in straddling)  # cut off mid-request: still an explicit answer
        assert during and all(c.status == 503 for c in during)
        assert after and all(c.status == 200 for c in after), [c for c in after if c.status != 200]
        assert worker.poll() is None and api.poll() is None  # nothing was restarted
    finally:
        cluster.stop()
        server.stop()
