"""Mid-stream failover with real processes: a worker SIGKILLed while it streams hands nothing visible to its
clients. The live worker takes its jobs over and continues each one from the tokens its client already has, so
every greedy stream's text equals the text of a run without the fault, with no error chunk and one finish."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import openai

from tests.faults.conftest import Cluster

WAVES = 2
STREAMS_PER_WAVE = 25  # 50 streams in all
MAX_TOKENS = 120
PROMPTS = [[{"role": "user", "content": f"Tell me about queue number {i}."}] for i in range(5)]


@dataclass
class Stream:
    prompt: int
    text: str = ""
    chunks: int = 0  # content chunks received (one per token with --stream-interval 1)
    finishes: list[str] = field(default_factory=list)
    error: str | None = None


async def _stream(client: openai.AsyncOpenAI, outcome: Stream) -> None:
    try:
        chunks = await client.chat.completions.create(
            model="tiny", messages=PROMPTS[outcome.prompt], max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        async for chunk in chunks:
            for choice in chunk.choices:
                if choice.delta.content:
                    outcome.text += choice.delta.content
                    outcome.chunks += 1
                if choice.finish_reason:
                    outcome.finishes.append(choice.finish_reason)
    except openai.APIError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        outcome.error = str(body.get("code") or exc.message)


async def test_sigkilled_worker_streams_continue_on_the_other(cluster: Cluster) -> None:
    cluster.start_worker("steady")
    victim = cluster.start_worker("victim-0")
    base_url = cluster.start_api()
    cluster.wait_workers(2)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        # at once: fault-free, and greedy text does not depend on what else is batched (the waves below rely on it)
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="tiny", messages=m, max_tokens=MAX_TOKENS, temperature=0)
                for m in PROMPTS
            )
        )
        reference = [reply.choices[0].message.content for reply in replies]

        streams: list[Stream] = []
        struck_at: list[int] = []  # tokens each stream had when its wave's worker was killed
        for wave in range(WAVES):
            outcomes = [Stream(prompt=i % len(PROMPTS)) for i in range(STREAMS_PER_WAVE)]
            tasks = []
            for outcome in outcomes:  # staggered, so the kill finds each stream at another token
                tasks.append(asyncio.create_task(_stream(client, outcome)))
                await asyncio.sleep(0.02)
            # strike once the victim runs some of them and most have begun
            while not (cluster.running(victim) > 0 and sum(o.chunks > 0 for o in outcomes) >= STREAMS_PER_WAVE // 2):
                assert not all(t.done() for t in tasks), "the wave ended before the fault could be injected"
                await asyncio.sleep(0.01)
            struck_at += [o.chunks for o in outcomes]
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)
            streams += outcomes
            if wave < WAVES - 1:
                victim = cluster.start_worker(f"victim-{wave + 1}")
                cluster.wait_workers(2)
    finally:
        await client.close()

    stats = cluster.stats()
    differing = [s for s in streams if s.text != reference[s.prompt]]
    errors = sorted({str(s.error) for s in streams if s.error})
    print(
        f"\n{len(streams)} greedy streams, a worker SIGKILLed {WAVES} times at tokens {sorted(set(struck_at))}: "
        f"{len(differing)} differ from the fault-free text, errors {errors}; "
        f"jobs taken over {stats.get('reclaimed', 0)}, continued mid-stream {stats.get('continued', 0)}"
    )
    assert [s.error for s in streams if s.error] == []
    assert [s.finishes for s in streams] == [["length"]] * len(streams)
    assert differing == []
    assert stats.get("continued", 0) >= WAVES, "no stream was continued: the fault tested nothing"
    assert len(set(struck_at)) > 1
