"""SIGTERM is an orderly stop: a worker finishes its running streams and deregisters; an API server stops taking
requests and finishes the streams it has open."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.faults.conftest import Cluster
from tests.faults.load import Load


async def _strike_when_streaming(load: Load, streams: int, kill: object) -> list:
    """Start ``streams`` streams; send the signal once every one of them has received text."""
    requests = asyncio.create_task(load.run(streaming=streams, plain=0))
    while load.first_tokens < streams and not requests.done():
        await asyncio.sleep(0.01)
    assert not requests.done(), "the streams finished before the signal could be sent"
    kill()  # type: ignore[operator]
    return await asyncio.wait_for(requests, timeout=120)


# Generous: on a loaded machine eight long streams can take a while, and the drain must outlast them.
DRAIN = "120"


async def test_sigterm_worker_finishes_its_streams(cluster: Cluster) -> None:
    cluster.env["QUEUECHAT_DRAIN_TIMEOUT"] = DRAIN
    worker = cluster.start_worker("worker")
    base_url = cluster.start_api()
    cluster.wait_workers(1)

    outcomes = await _strike_when_streaming(
        Load(base_url, max_tokens=384), 8, lambda: worker.send_signal(signal.SIGTERM)
    )

    assert [o.finish_reason for o in outcomes] == ["length"] * 8
    assert all(o.error is None for o in outcomes)
    assert worker.wait(timeout=60) == 0
    assert cluster.live() == []  # deregistered, not left to expire
    assert cluster.stats()["completed"] == 8


async def test_sigterm_worker_hands_back_what_it_cannot_finish(cluster: Cluster) -> None:
    """With no time to drain, the running jobs are left pending and a live worker takes them over: non-streaming
    requests still complete."""
    leaving = cluster.start_worker("leaving", extra=["--drain-timeout", "0"])
    cluster.start_worker("staying")
    base_url = cluster.start_api()
    cluster.wait_workers(2)
    load = Load(base_url, max_tokens=1000)
    requests = asyncio.create_task(load.run(streaming=0, plain=8))
    while cluster.running(leaving) == 0 and not requests.done():
        await asyncio.sleep(0.01)
    leaving.send_signal(signal.SIGTERM)
    outcomes = await asyncio.wait_for(requests, timeout=120)

    assert [o.finish_reason for o in outcomes] == ["length"] * 8
    assert leaving.wait(timeout=60) == 0
    assert cluster.stats()["reclaimed"] >= 1


async def test_sigterm_api_finishes_open_streams(cluster: Cluster) -> None:
    cluster.env["QUEUECHAT_DRAIN_TIMEOUT"] = DRAIN
    cluster.start_worker("worker")
    base_url = cluster.start_api()
    cluster.wait_workers(1)
    api = next(p for p in cluster.processes if "api" in list(p.args))

    outcomes = await _strike_when_streaming(Load(base_url, max_tokens=384), 8, lambda: api.send_signal(signal.SIGTERM))

    assert [o.finish_reason for o in outcomes] == ["length"] * 8
    # uvicorn re-raises the signal once its graceful shutdown is done, so a clean exit reads as "killed by TERM"
    assert api.wait(timeout=60) in (0, -signal.SIGTERM)
    try:
        httpx.get(f"{base_url}/health", timeout=2)
        raise AssertionError("the API still accepts connections after SIGTERM")
    except httpx.TransportError:
        pass
