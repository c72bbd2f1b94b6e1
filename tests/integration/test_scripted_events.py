"""What the API makes of event sequences a real model seldom produces, from a scripted worker: a ``seq`` gap that the
job's event log cannot fill either is an error (never silently corrupted text), and a streamed ``auto`` tool call is
held back, then streamed as a call."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from broker.connection import sync_client
from broker.consumer import Delivery, JobConsumer
from broker.keys import Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Accepted, Delta, Done, FinishReason, Usage
from broker.settings import Settings
from tests.conftest import ApiServer
from tests.openai_error import openai_error

MODEL = "scripted"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
Script = list[Accepted | Delta | Done]


@pytest.fixture
def scripted(settings: Settings, start_api: Callable[..., ApiServer]) -> Iterator[Callable[[list[Script]], str]]:
    """Factory: a worker that answers the next jobs with these events, one script per job; returns the API's URL."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    consumer = JobConsumer(client, keys, [MODEL], "scripted")
    consumer.ensure_groups()
    WorkerRegistration(client, keys, WorkerCard(id="scripted", models=[MODEL]), ttl=60).heartbeat(WorkerStatus())
    threads: list[threading.Thread] = []

    def serve(scripts: list[Script]) -> None:
        for script in scripts:
            items: list[object] = []
            while not items:
                items = list(consumer.read(count=1, block_ms=100))
            [item] = items
            assert isinstance(item, Delivery)
            consumer.publish([(item.job.id, event) for event in script])
            consumer.ack([item])

    def start(scripts: list[Script]) -> str:
        thread = threading.Thread(target=serve, args=(scripts,), daemon=True)
        thread.start()
        threads.append(thread)
        return start_api().base_url

    yield start
    for thread in threads:
        thread.join(10)


def _done(seq: int, tokens: int, reason: FinishReason = FinishReason.STOP) -> Done:
    return Done(seq=seq, finish_reason=reason, usage=Usage(prompt_tokens=4, completion_tokens=tokens))


def _gap() -> Script:
    return [
        Accepted(seq=0, worker="scripted", attempt=1, prompt_tokens=4),
        Delta(seq=1, text="Sun", token_ids=[1]),
        Delta(seq=3, text="ny", token_ids=[3]),  # seq 2 never arrived
        _done(4, 3),
    ]


def test_a_seq_gap_is_an_error_whole_or_streamed(scripted: Callable[[list[Script]], str]) -> None:
    # the scripted worker appends to the log what it publishes, so seq 2 is missing from the log as well
    base_url = scripted([_gap(), _gap()])
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8}
    whole = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert whole.status_code == 503
    assert openai_error(whole.json()).code == "events_lost"
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200  # the first event was fine: the stream had begun
        data = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert texts == ["", "Sun"]  # what came before the gap, and nothing after it
    assert openai_error(chunks[-1]).code == "events_lost"


WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_a_streamed_auto_tool_call_is_held_back_then_returned_as_a_call(
    scripted: Callable[[list[Script]], str],
) -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    base_url = scripted(
        [
            [
                Accepted(seq=0, worker="scripted", attempt=1, prompt_tokens=4),
                Delta(seq=1, text="<tool_", token_ids=[1]),  # could still be text: held back
                Delta(seq=2, text=f"call>{call}", token_ids=[2, 3]),
                Delta(seq=3, text="</tool_call>", token_ids=[4]),
                _done(4, 4),
            ]
        ]
    )
    client = OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=30)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            tools=[WEATHER],
            tool_choice="auto",
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""  # no part of the call was shown as text
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    # as OpenAI streams a call: id and name first (arguments ""), then fragments of the arguments
    first, fragments = calls[0], calls[1:]
    assert first.function and (first.index, first.function.name, first.function.arguments) == (0, "get_weather", "")
    assert first.id and first.id.startswith("call_")
    assert fragments and all(tc.index == 0 and tc.id is None and tc.function for tc in fragments)
    assert json.loads("".join(tc.function.arguments or "" for tc in fragments if tc.function)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
