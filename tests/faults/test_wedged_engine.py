"""One of two workers' engine wedges mid-generation (its forward pass blocks while the process lives, as a stuck
kernel or a deadlock would): it says so in its heartbeat (``queuechat info`` shows it ``wedged``), its jobs are taken
over and continued by the other worker, every client gets its whole answer, and the wedged process exits non-zero
so that its supervisor restarts it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import openai
from typer.testing import CliRunner

from queuechat.cli import app
from tests.faults.conftest import Cluster, until
from tests.faults.load import PROMPT
from workers.main import WEDGED_EXIT_STATUS

STREAMS = 8
MAX_TOKENS = 400


async def test_a_wedged_engine_hands_its_jobs_to_the_other_worker(cluster: Cluster, tmp_path: Path) -> None:
    wedge = tmp_path / "wedge"
    cluster.env["QUEUECHAT_STALL_TIMEOUT"] = "1"  # the floor of the wedge limit: short, as the heartbeats are
    victim = cluster.start_worker("victim", module="tests.faults.hooked_worker", env={"QCTEST_WEDGE_FILE": str(wedge)})
    cluster.start_worker("healthy")
    base_url = cluster.start_api()
    cluster.wait_workers(2)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    http = httpx.AsyncClient(timeout=300)
    texts = [""] * STREAMS
    states: set[str] = set()

    body = {"model": "tiny", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    odd: list[str] = []

    async def stream(i: int) -> str | None:
        finish = None
        async with http.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    if line.startswith("data:") and line != "data: [DONE]":
                        odd.append(line)
                    continue
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                for choice in chunk["choices"]:
                    texts[i] += choice["delta"].get("content") or ""
                    finish = choice["finish_reason"] or finish
        return finish

    try:
        reply = await client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0
        )
        reference = reply.choices[0].message.content
        tasks = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
        while not (all(texts) and cluster.running(victim)) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        assert not any(t.done() for t in tasks), "a stream ended before the fault could be injected"
        wedge.touch()  # the victim's next forward pass never returns

        def victim_state() -> bool:
            """The victim's state as `queuechat info` shows it (its card lives on until its heartbeat expires: a
            wedged worker does not deregister)."""
            info = CliRunner().invoke(app, ["info", "-u", cluster.redis_url, "--key-prefix", cluster.prefix, "-r"])
            for line in info.output.splitlines():
                if line.startswith("worker ") and f" pid={victim.pid} " in line:
                    states.update(re.findall(r" state=(\S+)", line))
            return "wedged" in states or victim.poll() is not None

        until(victim_state, timeout=60)
        finishes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)
    finally:
        await client.close()
        await http.aclose()
    until(lambda: victim.poll() is not None, timeout=60)

    print(f"\nwedged engine: victim states seen {sorted(states)}, exit status {victim.returncode}")
    assert odd == []
    assert "wedged" in states
    assert finishes == ["length"] * STREAMS
    assert texts == [reference] * STREAMS  # continued where they were, nothing repeated or lost
    assert victim.returncode == WEDGED_EXIT_STATUS  # not 0: its supervisor restarts it
    assert cluster.stats().get("continued", 0) >= 1
    assert "wedged" in cluster.log_text("victim")
