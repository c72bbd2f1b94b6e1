"""OpenAI's Responses API against the real stack (tiny model): bad input answered in OpenAI's error shape without
reaching a worker, unknown responses and models as OpenAI's 404s."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import Stack
from tests.hostile import LONE, deep_schema, json_bytes
from tests.openai_error import openai_error
from tests.responses_support import QUESTION, WEATHER
from tests.responses_support import client as client  # the fixture (re-exported, so not an unused import)

BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("no input", {}, "input"),
    ("an empty input list", {"input": []}, "input"),
    ("temperature over 2", {"input": QUESTION, "temperature": 2.5}, "temperature"),
    ("max_output_tokens 0", {"input": QUESTION, "max_output_tokens": 0}, "max_output_tokens"),
    ("an unknown parameter", {"input": QUESTION, "frobnicate": 1}, "frobnicate"),
    ("reasoning", {"input": QUESTION, "reasoning": {"effort": "high"}}, "reasoning"),
    ("a conversation", {"input": QUESTION, "conversation": "conv_1"}, "conversation"),
    ("a stored prompt", {"input": QUESTION, "prompt": {"id": "pmpt_1"}}, "prompt"),
    ("max_tool_calls", {"input": QUESTION, "max_tool_calls": 2}, "max_tool_calls"),
    ("top_logprobs", {"input": QUESTION, "top_logprobs": 2}, "top_logprobs"),
    ("include", {"input": QUESTION, "include": ["message.output_text.logprobs"]}, "include"),
    ("truncation auto", {"input": QUESTION, "truncation": "auto"}, "truncation"),
    ("a flex service tier", {"input": QUESTION, "service_tier": "flex"}, "service_tier"),
    ("a hosted tool", {"input": QUESTION, "tools": [{"type": "web_search"}]}, "web_search"),
    ("tool_choice without tools", {"input": QUESTION, "tool_choice": "required"}, "tools"),
    (
        "tool_choice naming another tool",
        {"input": QUESTION, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}},
        "other",
    ),
    (
        "an image part",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input_image",
    ),
    ("a reasoning item without its summary", {"input": [{"type": "reasoning", "id": "rs_1"}]}, "summary"),
    ("an item reference", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
    (
        "a function call without call_id",
        {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        "call_id",
    ),
    (
        "output_text from the user",
        {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
        "output_text",
    ),
    (
        "a json_schema format without schema",
        {"input": QUESTION, "text": {"format": {"type": "json_schema", "name": "x"}}},
        "schema",
    ),
    ("verbosity high", {"input": QUESTION, "text": {"verbosity": "high"}}, "verbosity"),
    ("background without store", {"input": QUESTION, "background": True, "store": False}, "store"),
    ("stream_options without stream", {"input": QUESTION, "stream_options": {"include_obfuscation": False}}, "stream"),
    ("an unknown previous response", {"input": QUESTION, "previous_response_id": "resp_nope"}, "previous_response_id"),
    (
        "a forced call and a JSON format",
        {"input": QUESTION, "tools": [WEATHER], "tool_choice": "required", "text": {"format": {"type": "json_object"}}},
        "tool_choice",
    ),
    ("a metadata value too long", {"input": QUESTION, "metadata": {"k": "x" * 513}}, "metadata"),
    ("a lone surrogate in the input", {"input": LONE}, "surrogate"),
    ("a lone surrogate in the instructions", {"input": QUESTION, "instructions": LONE}, "surrogate"),
    (
        "a tool's parameters nested 300 deep",
        {"input": QUESTION, "tools": [{"type": "function", "name": "f", "parameters": deep_schema()}]},
        "nested",
    ),
]


@pytest.mark.parametrize(("case", "body", "named"), BAD_REQUESTS, ids=[c for c, _, _ in BAD_REQUESTS])
def test_bad_input_is_an_openai_400_and_reaches_no_worker(
    stack: Stack, settings: Settings, case: str, body: dict[str, Any], named: str
) -> None:
    stream = Keys(settings.key_prefix).jobs("tiny")
    redis = sync_client(str(settings.redis_url))
    before = redis.xlen(stream)
    r = httpx.post(
        f"{stack.base_url}/v1/responses",
        content=json_bytes({"model": "tiny", "max_output_tokens": 2, **body}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = openai_error(r.json())
    assert error.type == "invalid_request_error"
    assert named in error.message or named == error.param, error
    assert redis.xlen(stream) == before
    assert not list(redis.scan_iter(match=f"{settings.key_prefix}:responses:*"))  # nothing stored either
    ok = httpx.post(f"{stack.base_url}/v1/responses", json={"model": "tiny", "input": "Hi", "max_output_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_lookups_of_unknown_responses_are_openai_404s(stack: Stack) -> None:
    for method, path in [
        ("GET", "/v1/responses/resp_nope"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("POST", "/v1/responses/resp_nope/cancel"),
        ("GET", "/v1/responses/resp_nope/input_items"),
    ]:
        r = httpx.request(method, f"{stack.base_url}{path}")
        assert r.status_code == 404, (method, path, r.text)
        assert openai_error(r.json()).code == "not_found"
    r = httpx.get(f"{stack.base_url}/v1/responses/resp_nope", params={"stream": "true", "starting_after": 3})
    assert r.status_code == 404 and openai_error(r.json()).code == "not_found"
    r = httpx.get(f"{stack.base_url}/v1/responses/resp_nope/input_items", params={"limit": 0})
    assert r.status_code == 400 and "limit" in str(openai_error(r.json()).param)


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_the_clients_not_found_error(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input=QUESTION, stream=stream)
    assert caught.value.code == "model_not_found"
