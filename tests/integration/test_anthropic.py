"""Anthropic's Messages API through the official ``anthropic`` client, unchanged, against the real stack (tiny
model): answers, streams in Anthropic's event order, a tool_use round trip, count_tokens, and bad input answered
in Anthropic's error shape without reaching a worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import ApiServer, Stack, wait_for
from tests.hostile import LONE, deep_schema, json_bytes

GREEDY = {"temperature": 0}  # the current SDK sends sampling parameters only as extra_body
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}


@pytest.fixture
def claude(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=60)


def test_message_matches_the_chat_answer(claude: anthropic.Anthropic, stack: Stack) -> None:
    reply = claude.messages.create(model="tiny", max_tokens=12, messages=MESSAGES, extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "tiny"
    assert reply.id.startswith("msg_")
    assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None
    assert reply.usage.output_tokens == 12 and reply.usage.input_tokens > 5
    (block,) = reply.content
    assert block.type == "text" and block.text
    chat = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)
    same = chat.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, extra_body=GREEDY)
    assert block.text == same.choices[0].message.content
    assert reply.usage.input_tokens == same.usage.prompt_tokens


def test_system_prompt_reaches_the_model(claude: anthropic.Anthropic) -> None:
    plain = claude.messages.create(model="tiny", max_tokens=8, messages=MESSAGES, extra_body=GREEDY)
    with_system = claude.messages.create(
        model="tiny",
        max_tokens=8,
        messages=MESSAGES,
        extra_body=GREEDY,
        system=[{"type": "text", "text": "You answer in one word."}],
    )
    assert with_system.usage.input_tokens > plain.usage.input_tokens


def test_stream_events_in_order_and_text_equal_to_the_answer(claude: anthropic.Anthropic) -> None:
    whole = claude.messages.create(model="tiny", max_tokens=16, messages=MESSAGES, extra_body=GREEDY)
    events = list(
        claude.messages.create(model="tiny", max_tokens=16, messages=MESSAGES, stream=True, extra_body=GREEDY)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == whole.content[0].text
    assert events[0].message.usage.input_tokens == whole.usage.input_tokens
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 16
    # the SDK's stream helper reassembles the same message
    with claude.messages.stream(model="tiny", max_tokens=16, messages=MESSAGES, extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == text
        final = stream.get_final_message()
    assert final.usage.output_tokens == 16 and final.stop_reason == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(claude: anthropic.Anthropic, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": 40,
        "messages": MESSAGES,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    if stream:
        with claude.messages.stream(**kwargs) as events:
            reply = events.get_final_message()
    else:
        reply = claude.messages.create(**kwargs)
    assert reply.stop_reason == "tool_use"
    (call,) = [b for b in reply.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    assert call.input["city"] in ("Paris", "Oslo") and call.input["unit"] in ("C", "F")
    # the client sends the call and its result back; the model answers on
    follow_up = claude.messages.create(
        model="tiny",
        max_tokens=8,
        tools=[WEATHER],
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]},
        ],
    )
    assert follow_up.content and follow_up.usage.input_tokens > reply.usage.input_tokens


def test_output_format_constrains_the_answer_to_the_schema(claude: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["Paris", "Oslo"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = claude.messages.create(
        model="tiny",
        max_tokens=40,
        messages=MESSAGES,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert json.loads(reply.content[0].text)["answer"] in ("Paris", "Oslo")


def test_count_tokens_counts_the_prompt_the_model_gets(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="tiny", messages=MESSAGES)
    reply = claude.messages.create(model="tiny", max_tokens=2, messages=MESSAGES)
    assert counted.input_tokens == reply.usage.input_tokens
    with_tools = claude.messages.count_tokens(model="tiny", messages=MESSAGES, tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens  # the template renders the tools into the prompt


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("no max_tokens", {"messages": MESSAGES}, "max_tokens"),
    ("temperature over 1", {"max_tokens": 4, "messages": MESSAGES, "temperature": 1.5}, "temperature"),
    ("no messages", {"max_tokens": 4, "messages": []}, "messages"),
    ("a role Anthropic has not", {"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "role"),
    (
        "an image block",
        {
            "max_tokens": 4,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}],
                }
            ],
        },
        "image",
    ),
    ("extended thinking", {"max_tokens": 4, "messages": MESSAGES, "thinking": {"type": "enabled"}}, "thinking"),
    ("an effort level", {"max_tokens": 4, "messages": MESSAGES, "output_config": {"effort": "high"}}, "effort"),
    ("fast mode", {"max_tokens": 4, "messages": MESSAGES, "speed": "fast"}, "speed"),
    ("a container", {"max_tokens": 4, "messages": MESSAGES, "container": "c1"}, "container"),
    ("tool_choice without tools", {"max_tokens": 4, "messages": MESSAGES, "tool_choice": {"type": "any"}}, "tools"),
    ("five stop sequences", {"max_tokens": 4, "messages": MESSAGES, "stop_sequences": list("abcde")}, "stop"),
    (
        "tool_use in a user turn",
        {
            "max_tokens": 4,
            "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}],
        },
        "assistant",
    ),
    ("a lone surrogate in a message", {"max_tokens": 4, "messages": [{"role": "user", "content": LONE}]}, "surrogate"),
    ("a lone surrogate in the system prompt", {"max_tokens": 4, "messages": MESSAGES, "system": LONE}, "surrogate"),
    ("a lone surrogate in a stop sequence", {"max_tokens": 4, "messages": MESSAGES, "stop_sequences": [LONE]},
     "surrogate"),
    ("a tool schema nested 300 deep", {"max_tokens": 4, "messages": MESSAGES,
     "tools": [{"name": "f", "input_schema": deep_schema()}]}, "nested"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "named"), BAD_REQUESTS, ids=[c for c, _, _ in BAD_REQUESTS])
def test_bad_input_is_400_in_anthropic_shape_and_reaches_no_worker(
    stack: Stack, settings: Settings, case: str, body: dict[str, Any], named: str
) -> None:
    stream = Keys(settings.key_prefix).jobs("tiny")
    before = sync_client(str(settings.redis_url)).xlen(stream)
    r = httpx.post(
        f"{stack.base_url}/v1/messages",
        content=json_bytes({"model": "tiny", **body}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert named in error["error"]["message"], error
    assert sync_client(str(settings.redis_url)).xlen(stream) == before
    # and the server still answers
    ok = httpx.post(f"{stack.base_url}/v1/messages", json={"model": "tiny", "max_tokens": 2, "messages": MESSAGES})
    assert ok.status_code == 200, ok.text


COUNT_TOKENS_BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("no messages", {"model": "tiny"}, 400, "invalid_request_error"),
    ("an image block", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image"}]}]}, 400,
     "invalid_request_error"),
    ("max_tokens, which counting has not", {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}, 400,
     "invalid_request_error"),
    ("an unknown model", {"model": "nope", "messages": MESSAGES}, 404, "not_found_error"),
    ("a lone surrogate", {"model": "tiny", "messages": [{"role": "user", "content": LONE}]}, 400,
     "invalid_request_error"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "body", "status", "kind"), COUNT_TOKENS_BAD_REQUESTS, ids=[c for c, *_ in COUNT_TOKENS_BAD_REQUESTS]
)
def test_bad_count_tokens_requests_are_anthropic_errors(
    stack: Stack, case: str, body: dict[str, Any], status: int, kind: str
) -> None:
    r = httpx.post(
        f"{stack.base_url}/v1/messages/count_tokens",
        content=json_bytes(body),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind


def test_unknown_model_is_the_clients_not_found_error(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=MESSAGES)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_x_api_key_is_accepted_and_a_wrong_key_is_anthropics_401(
    settings: Settings, start_worker: Callable[..., Any], start_api: Callable[..., ApiServer]
) -> None:
    start_worker()
    api = start_api(settings.model_copy(update={"api_keys": ["sk-one"]}))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models", headers={"x-api-key": "sk-one"}).json()["data"])
    good = anthropic.Anthropic(base_url=api.base_url, api_key="sk-one", max_retries=0)
    assert good.messages.create(model="tiny", max_tokens=2, messages=MESSAGES).content
    bad = anthropic.Anthropic(base_url=api.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(model="tiny", max_tokens=2, messages=MESSAGES)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    # the OpenAI routes keep OpenAI's shape, and take the x-api-key header too
    r = httpx.get(f"{api.base_url}/v1/models", headers={"x-api-key": "sk-wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
