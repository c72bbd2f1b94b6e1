"""Bad input gets a 4xx in OpenAI's error shape, never a 5xx, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Stack

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
    ("/v1/chat/completions", "unsupported parameter", {"model": "tiny", "messages": MSG, "logit_bias": {"1": 2}}, 400),
    ("/v1/chat/completions", "stream_options without stream",
     {"model": "tiny", "messages": MSG, "stream_options": {"include_usage": True}}, 400),
    ("/v1/chat/completions", "seed beyond 64 bits", {"model": "tiny", "messages": MSG, "seed": 2**70}, 400),
    ("/v1/chat/completions", "negative stop token id",
     {"model": "tiny", "messages": MSG, "stop_token_ids": [-1]}, 400),
    ("/v1/chat/completions", "unknown model", {"model": "nope", "messages": MSG}, 404),
    ("/v1/completions", "missing prompt", {"model": "tiny"}, 400),
    ("/v1/completions", "empty prompt list", {"model": "tiny", "prompt": []}, 400),
    ("/v1/completions", "prompt wrong type", {"model": "tiny", "prompt": {"a": 1}}, 400),
    ("/v1/completions", "token id out of vocabulary", {"model": "tiny", "prompt": [10**9], "max_tokens": 2}, 400),
    ("/v1/completions", "negative token id", {"model": "tiny", "prompt": [-3], "max_tokens": 2}, 400),
    ("/v1/no/such/route", "unknown route", {"model": "tiny"}, 404),
]  # fmt: skip


@pytest.mark.parametrize(("path", "why", "body", "status"), BAD_REQUESTS, ids=[b[1] for b in BAD_REQUESTS])
def test_bad_request_gets_openai_error(stack: Stack, path: str, why: str, body: Any, status: int) -> None:
    kwargs: dict[str, Any] = {"content": body, "headers": {"content-type": "application/json"}}
    if not isinstance(body, bytes):
        kwargs = {"json": body}
    r = httpx.post(f"{stack.base_url}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    # and the server still answers a good request afterwards
    ok = httpx.post(
        f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2}, timeout=30
    )
    assert ok.status_code == 200


def test_wrong_method_is_openai_shaped(stack: Stack) -> None:
    r = httpx.get(f"{stack.base_url}/v1/chat/completions")
    assert r.status_code == 405
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_validation_error_names_the_parameter(stack: Stack) -> None:
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": -1})
    assert r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "logit_bias": {}})
    assert r.json()["error"]["param"] == "logit_bias"
