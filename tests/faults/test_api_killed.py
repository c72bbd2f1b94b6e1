"""An API process SIGKILLed mid-stream (a chat completion's, a completion's): its client reconnects to a second API
process with ``Last-Event-ID`` and gets exactly the rest of the stream (the worker keeps the job running for a while
with nobody listening, and the job's log holds what was published meanwhile)."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from tests.faults.conftest import Cluster
from tests.sse import SseEvent, parse_sse

MAX_TOKENS = 300
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me about queues."}], "max_tokens": MAX_TOKENS}
# n=2: two choices of one prompt are one job, so the whole stream resumes
COMPLETION = {"model": "tiny", "prompt": "Tell me about queues.", "max_tokens": MAX_TOKENS, "n": 2}


def _texts(events: list[SseEvent]) -> tuple[dict[int, str], list[str]]:
    texts: dict[int, str] = {}
    finishes = []
    for event in events:
        if event.data == "[DONE]":
            continue
        chunk = json.loads(event.data)
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
            if choice["finish_reason"]:
                finishes.append(choice["finish_reason"])
    return texts, finishes


def _answers(reply: dict[str, object]) -> dict[int, str]:
    choices = reply["choices"]
    assert isinstance(choices, list)
    return {c["index"]: c["message"]["content"] if "message" in c else c["text"] for c in choices}


@pytest.mark.parametrize(("endpoint", "body"), [("chat/completions", CHAT), ("completions", COMPLETION)])
async def test_a_stream_resumes_on_another_api_after_its_api_is_killed(
    cluster: Cluster, endpoint: str, body: dict[str, object]
) -> None:
    cluster.start_worker("worker")
    first_api = cluster.start_api()
    first_process = cluster.processes[-1]
    second_api = cluster.start_api()
    cluster.wait_workers(1)
    async with httpx.AsyncClient(timeout=60) as client:
        reply = await client.post(f"{second_api}/v1/{endpoint}", json={**body, "temperature": 0})
        reference = _answers(reply.json())

        lines: list[str] = []
        received = 0
        try:
            async with client.stream(
                "POST", f"{first_api}/v1/{endpoint}", json={**body, "temperature": 0, "stream": True}
            ) as r:
                async for line in r.aiter_lines():
                    lines.append(line)
                    received += line == ""
                    if received == 20:
                        first_process.send_signal(signal.SIGKILL)  # the client is still connected
        except httpx.HTTPError:
            pass  # the connection died with its server
        first_process.wait(timeout=10)
        before = [e for e in parse_sse([*lines, ""]) if e.id is not None]
        assert len(before) >= 20 and before[-1].data != "[DONE]", "the stream ended before its API was killed"
        completion_id = json.loads(before[0].data)["id"]

        resumed = await client.get(
            f"{second_api}/v1/{endpoint}/{completion_id}/stream", headers={"Last-Event-ID": str(before[-1].id)}
        )
        assert resumed.status_code == 200, resumed.text
        after = parse_sse(resumed.text.splitlines())

    ids = [e.id for e in before + after]
    texts, finishes = _texts(before + after)
    print(f"\nAPI killed after {len(before)} events; resumed on another API: {len(after)} more, text intact")
    assert len(set(ids)) == len(ids)  # no event twice
    assert after[-1].data == "[DONE]"
    assert finishes == ["length"] * len(reference)
    assert texts == reference  # nothing missing, nothing repeated
