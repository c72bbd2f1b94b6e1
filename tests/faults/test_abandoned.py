"""Clients that give up (a client timeout) leave no work behind, with real worker and API processes: jobs whose
clients left while queued are skipped, and a non-streaming job whose client left mid-generation stops."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import wait_for
from tests.faults.conftest import Cluster

ABANDONED = 10
LONG = 3000  # the tiny model never ends by itself: this runs for many seconds


def _time_out(base_url: str, i: int, timeout: float) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=timeout, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"story {i}"}], max_tokens=LONG
        )


def test_abandoned_jobs_do_not_run(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    cluster = Cluster(redis_url, tiny_model_dir, tmp_path)
    try:
        worker = cluster.start_worker("worker", slots=1)
        base_url = cluster.start_api()
        cluster.wait_workers(1)
        release = threading.Event()

        def block() -> None:  # holds the one slot until released, then hangs up
            body = {"model": "tiny", "prompt": "hold", "max_tokens": LONG, "stream": True}
            with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as r:
                for _ in r.iter_lines():
                    if release.is_set():
                        return

        blocker = threading.Thread(target=block, daemon=True)
        blocker.start()
        wait_for(lambda: cluster.running(worker) == 1, timeout=30)
        # Non-streaming clients that give up while their jobs wait behind the blocker.
        with ThreadPoolExecutor(ABANDONED) as pool:
            list(pool.map(lambda i: _time_out(base_url, i, 1.0), range(ABANDONED)))
        release.set()
        blocker.join(60)
        # The blocker was cancelled when it hung up; the abandoned jobs were skipped, never started.
        wait_for(lambda: cluster.stats().get("cancelled", 0) == 1 + ABANDONED, timeout=60)
        wait_for(lambda: cluster.running(worker) == 0, timeout=30)
        assert "completed" not in cluster.stats()
        assert cluster.log_text("worker").count(" cancelled wait=") == 1  # only the blocker ever ran

        # A non-streaming client that gives up after 2 s while its job runs: the job stops, far short of its end.
        _time_out(base_url, ABANDONED, 2.0)
        wait_for(lambda: cluster.stats().get("cancelled", 0) == 2 + ABANDONED, timeout=30)
        wait_for(lambda: cluster.running(worker) == 0, timeout=30)
        stats = cluster.stats()
        assert "completed" not in stats
        assert stats["output_tokens"] < 2 * LONG
    finally:
        cluster.stop()
