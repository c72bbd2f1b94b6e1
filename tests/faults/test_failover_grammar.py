"""Mid-stream failover of grammar-constrained output with real processes: a worker SIGKILLed (or SIGTERMed with no
time to drain) while it streams JSON under a json_schema response_format or a forced tool call hands nothing
visible to its clients. The worker that takes a job over starts the grammar past the tokens its client already has
and goes on from there, so every greedy stream's text equals the fault-free text, with no error chunk, and it
still follows the schema."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import openai

from tests.faults.conftest import Cluster

STREAMS = 16  # every fourth one a forced tool call, the others a json_schema response_format
MAX_TOKENS = 400  # more than the longest output the schema allows: every stream ends by its grammar
PROMPTS = [[{"role": "user", "content": f"List the weather of queue number {i}."}] for i in range(4)]
# Long enough (six fixed items) that a kill finds streams mid-output, and bounded, so the text always completes.
REPORT = {
    "type": "object",
    "properties": {
        "readings": {
            "type": "array",
            "minItems": 6,
            "maxItems": 6,
            "items": {
                "type": "object",
                "properties": {
                    "city": {"enum": ["Paris", "Oslo", "Lima", "Quito"]},
                    "unit": {"enum": ["C", "F"]},
                    "windy": {"type": "boolean"},
                },
                "required": ["city", "unit", "windy"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["readings"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "report_weather", "parameters": REPORT}}


def _request(number: int) -> dict[str, Any]:
    request: dict[str, Any] = {"model": "tiny", "messages": PROMPTS[number % len(PROMPTS)], "max_tokens": MAX_TOKENS}
    if number % 4 == 3:
        request |= {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "report_weather"}}}
    else:
        request["response_format"] = {"type": "json_schema", "json_schema": {"name": "report", "schema": REPORT}}
    return request


@dataclass
class Stream:
    number: int
    text: str = ""  # the content, or the forced call's arguments
    chunks: int = 0
    finishes: list[str] = field(default_factory=list)
    error: str | None = None


async def _stream(client: openai.AsyncOpenAI, outcome: Stream) -> None:
    try:
        chunks = await client.chat.completions.create(**_request(outcome.number), temperature=0, stream=True)
        async for chunk in chunks:
            for choice in chunk.choices:
                pieces = [choice.delta.content or ""]
                pieces += [call.function.arguments or "" for call in choice.delta.tool_calls or [] if call.function]
                if "".join(pieces):
                    outcome.text += "".join(pieces)
                    outcome.chunks += 1
                if choice.finish_reason:
                    outcome.finishes.append(choice.finish_reason)
    except openai.APIError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        outcome.error = str(body.get("code") or exc.message)


async def _reference(client: openai.AsyncOpenAI, number: int) -> str:
    reply = await client.chat.completions.create(**_request(number), temperature=0)
    message = reply.choices[0].message
    if message.tool_calls:
        call = message.tool_calls[0]
        assert call.type == "function"
        return call.function.arguments
    return message.content or ""


async def _strike_mid_stream(cluster: Cluster, victim: subprocess.Popen[bytes], strike: signal.Signals) -> None:
    base_url = cluster.start_api()
    cluster.wait_workers(2)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=180)
    try:
        # at once: fault-free, and greedy text does not depend on what else is batched (the streams below rely on it)
        reference = list(await asyncio.gather(*(_reference(client, number) for number in range(len(PROMPTS)))))
        outcomes = [Stream(number) for number in range(STREAMS)]
        tasks = []
        for outcome in outcomes:  # staggered, so the fault finds each stream at another token
            tasks.append(asyncio.create_task(_stream(client, outcome)))
            await asyncio.sleep(0.02)
        while not (cluster.running(victim) > 0 and sum(o.chunks > 0 for o in outcomes) >= STREAMS // 2):
            assert not all(t.done() for t in tasks), "the streams ended before the fault could be injected"
            await asyncio.sleep(0.01)
        struck_at = [o.chunks for o in outcomes]
        victim.send_signal(strike)
        victim.wait(timeout=30)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    finally:
        await client.close()

    stats = cluster.stats()
    differing = [o.number for o in outcomes if o.text != reference[o.number % len(PROMPTS)]]
    print(
        f"\n{STREAMS} constrained greedy streams, a worker {strike.name}ed at chunks {sorted(set(struck_at))}: "
        f"{len(differing)} differ, errors {sorted({str(o.error) for o in outcomes if o.error})}; "
        f"taken over {stats.get('reclaimed', 0)}, continued mid-stream {stats.get('continued', 0)}"
    )
    assert [o.error for o in outcomes if o.error] == []
    assert [o.finishes for o in outcomes] == [["tool_calls" if o.number % 4 == 3 else "stop"] for o in outcomes]
    assert differing == []
    for outcome in outcomes:
        jsonschema.validate(json.loads(outcome.text), REPORT)
    # continued from the tokens sent, not run again from the start (which a stream that showed text cannot survive)
    assert stats.get("continued", 0) >= 1, "no stream was continued: the fault tested nothing"
    assert "runs again from its start" not in cluster.log_text("steady")
    assert any(0 < n < len(reference[0]) for n in struck_at)


async def test_sigkilled_worker_constrained_streams_continue_on_the_other(cluster: Cluster) -> None:
    cluster.start_worker("steady")
    victim = cluster.start_worker("victim")
    await _strike_mid_stream(cluster, victim, signal.SIGKILL)


async def test_sigtermed_worker_hands_constrained_streams_over_mid_way(cluster: Cluster) -> None:
    """No time to drain: the draining worker leaves its running jobs pending and the live one continues them."""
    cluster.start_worker("steady")
    victim = cluster.start_worker("victim", extra=["--drain-timeout", "0"])
    await _strike_mid_stream(cluster, victim, signal.SIGTERM)
