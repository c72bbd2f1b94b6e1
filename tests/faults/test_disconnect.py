"""Clients that hang up mid-stream stop their generation within a token or two."""

from __future__ import annotations

import asyncio
import re
import time

import openai
import pytest

from tests.conftest import wait_for
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)
from tests.faults.conftest import Cluster
from tests.faults.load import PROMPT

CLIENTS = 20
READ_TOKENS = 8


async def _read_then_hang_up(client: openai.AsyncOpenAI, model: str) -> tuple[str, int]:
    """Stream with logprobs (one entry per token, so the count is exact), read a few tokens, disconnect."""
    stream = await client.chat.completions.create(
        model=model,
        messages=PROMPT,
        max_tokens=2000,
        stream=True,
        logprobs=True,
    )
    received = 0
    job_id = ""
    async for chunk in stream:
        job_id = "job-" + chunk.id.removeprefix("chatcmpl-")
        for choice in chunk.choices:
            received += len(choice.logprobs.content or []) if choice.logprobs else 0
        if received >= READ_TOKENS:
            break
    await stream.close()
    return job_id, received


@pytest.mark.e2e
async def test_disconnected_streams_stop_generating(smollm2_cluster: Cluster) -> None:
    cluster = smollm2_cluster
    cluster.start_worker("worker", slots=CLIENTS)
    base_url = cluster.start_api()
    cluster.wait_workers(1)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        hung_up = await asyncio.gather(*(_read_then_hang_up(client, cluster.model) for _ in range(CLIENTS)))
    finally:
        await client.close()

    # Every job ends as cancelled, and then no more tokens appear for any of them.
    wait_for(lambda: cluster.stats().get("cancelled", 0) == CLIENTS, timeout=30)
    settled = wait_for(lambda: _settled(cluster), timeout=30)
    received = dict(hung_up)
    generated = settled["output_tokens"]
    after = generated - sum(received.values())
    # Per sequence, from the worker's log line of each cancelled job ("job <id> ... tokens=<prompt>+<output>").
    per_job = {
        m["job"]: int(m["output"]) - received[m["job"]]
        for m in re.finditer(
            r"job (?P<job>\S+) request_id=\S+ model=\S+ cancelled .*?tokens=\d+\+(?P<output>\d+)",
            cluster.log_text("worker"),
        )
    }
    assert sorted(per_job) == sorted(received)
    print(
        f"\n{CLIENTS} clients hung up after {READ_TOKENS}+ tokens: generated {generated}, "
        f"received {sum(received.values())}, "
        f"after disconnect {after} ({after / CLIENTS:.2f} per sequence, at most {max(per_job.values())}; "
        f"{settled.get('tokens_after_cancel', 0)} of them computed after the cancel)"
    )
    assert settled.get("completed", 0) == 0  # nothing could have finished on its own
    assert after / CLIENTS <= 2
    assert max(per_job.values()) <= 2


def _settled(cluster: Cluster) -> dict[str, int] | None:
    """The stats once two reads half a second apart agree (late tokens of cancelled sequences are in)."""
    first = cluster.stats()
    time.sleep(0.5)
    return first if cluster.stats() == first else None
