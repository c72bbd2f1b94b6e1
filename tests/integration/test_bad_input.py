"""Bad input gets a 4xx in OpenAI's error shape, never a 5xx, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)
from tests.hostile import LONE, deep_schema, json_bytes
from tests.openai_error import openai_error

MSG = [{"role": "user", "content": "hi"}]

BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("/v1/chat/completions", "malformed json", b'{"model": "tiny", "messages": [', 400),
    ("/v1/chat/completions", "not an object", b"[1, 2, 3]", 400),
    ("/v1/chat/completions", "empty body", b"", 400),
    ("/v1/chat/completions", "missing messages", {"model": "tiny"}, 400),
    ("/v1/chat/completions", "missing model", {"messages": MSG}, 400),
    ("/v1/chat/completions", "empty messages", {"model": "tiny", "messages": []}, 400),
    ("/v1/chat/completions", "negative max_tokens", {"model": "tiny", "messages": MSG, "max_tokens": -1}, 400),
    ("/v1/chat/completions", "zero max_tokens", {"model": "tiny", "messages": MSG, "max_tokens": 0}, 400),
    ("/v1/chat/completions", "string max_tokens", {"model": "tiny", "messages": MSG, "max_tokens": "many"}, 400),
    ("/v1/chat/completions", "messages not a list", {"model": "tiny", "messages": "hi"}, 400),
    ("/v1/chat/completions", "unknown role", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/v1/chat/completions", "negative temperature", {"model": "tiny", "messages": MSG, "temperature": -0.5}, 400),
    ("/v1/chat/completions", "top_p above 1", {"model": "tiny", "messages": MSG, "top_p": 1.5}, 400),
    ("/v1/chat/completions", "n is zero", {"model": "tiny", "messages": MSG, "n": 0}, 400),
    ("/v1/chat/completions", "too many stops", {"model": "tiny", "messages": MSG, "stop": list("abcde")}, 400),
    ("/v1/chat/completions", "stream not bool", {"model": "tiny", "messages": MSG, "stream": "yes please"}, 400),
    ("/v1/chat/completions", "unsupported parameter", {"model": "tiny", "messages": MSG, "guided_grammar": "x"}, 400),
    ("/v1/chat/completions", "stream_options without stream",
     {"model": "tiny", "messages": MSG, "stream_options": {"include_usage": True}}, 400),
    ("/v1/chat/completions", "seed beyond 64 bits", {"model": "tiny", "messages": MSG, "seed": 2**70}, 400),
    ("/v1/chat/completions", "priority out of range", {"model": "tiny", "messages": MSG, "priority": 10**6}, 400),
    ("/v1/chat/completions", "priority not an integer", {"model": "tiny", "messages": MSG, "priority": "1"}, 400),
    ("/v1/completions", "priority a float", {"model": "tiny", "prompt": "x", "priority": 0.5}, 400),
    ("/v1/chat/completions", "negative stop token id",
     {"model": "tiny", "messages": MSG, "stop_token_ids": [-1]}, 400),
    ("/v1/chat/completions", "unknown model", {"model": "nope", "messages": MSG}, 404),
    ("/v1/chat/completions", "lone surrogate in content",
     {"model": "tiny", "messages": [{"role": "user", "content": LONE}]}, 400),
    ("/v1/chat/completions", "lone surrogate in a content part",
     {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]}, 400),
    ("/v1/chat/completions", "lone surrogate in stop", {"model": "tiny", "messages": MSG, "stop": [LONE]}, 400),
    ("/v1/chat/completions", "schema nested 300 deep", {"model": "tiny", "messages": MSG, "response_format": {
     "type": "json_schema", "json_schema": {"name": "deep", "schema": deep_schema()}}}, 400),
    ("/v1/chat/completions", "tool parameters nested 300 deep", {"model": "tiny", "messages": MSG, "tools": [
     {"type": "function", "function": {"name": "f", "parameters": deep_schema()}}]}, 400),
    ("/v1/chat/completions", "forced tool with parameters nested 300 deep", {"model": "tiny", "messages": MSG,
     "tool_choice": "required",
     "tools": [{"type": "function", "function": {"name": "f", "parameters": deep_schema()}}]}, 400),
    ("/v1/completions", "missing prompt", {"model": "tiny"}, 400),
    ("/v1/completions", "empty prompt list", {"model": "tiny", "prompt": []}, 400),
    ("/v1/completions", "prompt wrong type", {"model": "tiny", "prompt": {"a": 1}}, 400),
    ("/v1/completions", "token id out of vocabulary", {"model": "tiny", "prompt": [10**9], "max_tokens": 2}, 400),
    ("/v1/completions", "negative token id", {"model": "tiny", "prompt": [-3], "max_tokens": 2}, 400),
    ("/v1/completions", "lone surrogate in prompt", {"model": "tiny", "prompt": LONE}, 400),
    ("/v1/completions", "lone surrogate in a prompt list", {"model": "tiny", "prompt": ["ok", LONE]}, 400),
    ("/v1/completions", "lone surrogate in stop", {"model": "tiny", "prompt": "x", "stop": LONE}, 400),
    ("/v1/no/such/route", "unknown route", {"model": "tiny"}, 404),
]  # fmt: skip

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

# messages, embeddings and the misc endpoints
SURFACE_BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("/v1/chat/completions", "image part", {"model": "tiny", "messages": [{"role": "user", "content": [IMAGE]}]}, 400),
    ("/v1/chat/completions", "audio part", {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}, 400),
    ("/v1/chat/completions", "unknown part type",
     {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "video", "text": "x"}]}]}, 400),
    ("/v1/chat/completions", "text part without text",
     {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400),
    ("/v1/chat/completions", "tool message without id",
     {"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400),
    ("/v1/chat/completions", "tool_calls on a user message",
     {"model": "tiny", "messages": [{"role": "user", "content": "x", "tool_calls": [TOOL_CALL]}]}, 400),
    ("/v1/chat/completions", "empty assistant message", {"model": "tiny", "messages": [{"role": "assistant"}]}, 400),
    ("/v1/chat/completions", "message is a string", {"model": "tiny", "messages": ["hi"]}, 400),
    ("/v1/chat/completions", "tool call arguments not a string", {"model": "tiny", "messages": [{"role": "assistant",
     "tool_calls": [{**TOOL_CALL, "function": {"name": "f", "arguments": {"a": 1}}}]}]}, 400),
    ("/v1/embeddings", "embeddings of a chat model", {"model": "tiny", "input": "x"}, 400),
    ("/v1/embeddings", "embeddings of an unknown model", {"model": "nope", "input": "x"}, 404),
    ("/v1/embeddings", "empty embedding input", {"model": "tiny", "input": ""}, 400),
    ("/v1/embeddings", "bad encoding_format", {"model": "tiny", "input": "x", "encoding_format": "hex"}, 400),
    ("/v1/embeddings", "input of objects", {"model": "tiny", "input": [{"text": "x"}]}, 400),
    ("/api/v1/token_check", "token_check without prompts", {"prompts": []}, 400),
    ("/api/v1/token_check", "token_check negative max_tokens",
     {"prompts": [{"model": "tiny", "prompt": "x", "max_tokens": -1}]}, 400),
    ("/api/v1/token_check", "token_check unknown model",
     {"prompts": [{"model": "nope", "prompt": "x", "max_tokens": 1}]}, 404),
    ("/tokenize", "tokenize neither prompt nor messages", {"model": "tiny"}, 400),
    ("/tokenize", "tokenize empty messages", {"model": "tiny", "messages": []}, 400),
    ("/tokenize", "tokenize unknown model", {"model": "nope", "prompt": "x"}, 404),
    ("/detokenize", "detokenize negative id", {"model": "tiny", "tokens": [-1]}, 400),
    ("/detokenize", "detokenize id beyond the vocabulary", {"model": "tiny", "tokens": [10**9]}, 400),
    ("/detokenize", "detokenize tokens not a list", {"model": "tiny", "tokens": "abc"}, 400),
    ("/version", "POST to a GET route", {}, 405),
    ("/v1/batches", "batch window other than 24h",
     {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "1h"}, 400),
    ("/v1/batches", "batch of an unknown file",
     {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404),
]  # fmt: skip
ALL_BAD_REQUESTS = BAD_REQUESTS + SURFACE_BAD_REQUESTS


@pytest.mark.parametrize(("path", "why", "body", "status"), ALL_BAD_REQUESTS, ids=[b[1] for b in ALL_BAD_REQUESTS])
def test_bad_request_gets_openai_error(stack: Stack, path: str, why: str, body: Any, status: int) -> None:
    content = body if isinstance(body, bytes) else json_bytes(body)
    r = httpx.post(f"{stack.base_url}{path}", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    openai_error(r.json())
    assert r.headers["x-request-id"]
    # and the server still answers a good request afterwards
    ok = httpx.post(
        f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2}, timeout=30
    )
    assert ok.status_code == 200


def test_wrong_method_is_openai_shaped(stack: Stack) -> None:
    r = httpx.get(f"{stack.base_url}/v1/chat/completions")
    assert r.status_code == 405
    openai_error(r.json())


def test_the_table_covers_every_json_route_with_statuses_the_api_documents() -> None:
    """Every route that takes a JSON body has bad requests in the table, and each status the table expects of a
    documented route is one /openapi.json documents for it."""
    from broker.settings import Settings
    from queuechat.compose import create_app

    assert len(ALL_BAD_REQUESTS) >= 30
    paths = create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()["paths"]
    json_routes = {
        path
        for path, operations in paths.items()
        if "application/json" in operations.get("post", {}).get("requestBody", {}).get("content", {})
    }
    # Anthropic's Messages API answers in its own error shape, and the Responses API has a table of its own
    from tests.integration.test_anthropic import BAD_REQUESTS as MESSAGES_BAD
    from tests.integration.test_anthropic import COUNT_TOKENS_BAD_REQUESTS
    from tests.integration.test_responses_bad_input import BAD_REQUESTS as RESPONSES_BAD

    elsewhere = {
        "/v1/messages": MESSAGES_BAD,
        "/v1/messages/count_tokens": COUNT_TOKENS_BAD_REQUESTS,
        "/v1/responses": RESPONSES_BAD,
    }
    assert all(len(table) >= 3 for table in elsewhere.values())
    assert json_routes - {path for path, *_ in ALL_BAD_REQUESTS} - set(elsewhere) == set()
    for path, why, _, status in ALL_BAD_REQUESTS:
        if "post" in paths.get(path, {}):
            assert str(status) in paths[path]["post"]["responses"], why


@pytest.mark.parametrize("path", ["/v1/models/nope", "/v1/models/org/nope", "/no/such/page"])
def test_bad_gets_are_openai_shaped(stack: Stack, path: str) -> None:
    r = httpx.get(f"{stack.base_url}{path}")
    assert r.status_code == 404
    openai_error(r.json())


def test_validation_error_names_the_parameter(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": -1})
    assert r.json()["error"]["param"] == "max_tokens"
    too_much = {"model": "tiny", "messages": MSG, "logit_bias": {"1": 200}}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=too_much)
    assert r.json()["error"]["param"] == "logit_bias"
