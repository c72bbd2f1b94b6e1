"""What a request gets when it leaves max_tokens out, and the server-side bounds on what it may ask for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from broker.connection import async_client, sync_client
from broker.errors import JobFailed
from broker.keys import Keys
from broker.producer import Producer
from broker.schemas import Job, JobKind
from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, Stack, wait_for
from tests.openai_error import openai_error

CAP = 20


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_completion_without_max_tokens_gets_16(stack: Stack) -> None:
    """As OpenAI's legacy endpoint and vLLM: not the rest of the context."""
    answer = _client(stack.base_url).completions.create(model="tiny", prompt="Once upon a time")
    assert answer.usage is not None and answer.usage.completion_tokens == 16
    assert answer.choices[0].finish_reason == "length"


@pytest.fixture
def capped(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> openai.OpenAI:
    """A worker started with QUEUECHAT_MAX_TOKENS_CAP=20, behind an API."""
    start_worker(settings_=settings.model_copy(update={"max_tokens_cap": CAP}))
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    return _client(api.base_url)


def test_the_cap_bounds_a_chat_completion_without_max_tokens(capped: openai.OpenAI) -> None:
    answer = capped.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me a story"}])
    assert answer.usage is not None and answer.usage.completion_tokens == CAP
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_max_tokens_over_the_cap_is_a_400(capped: openai.OpenAI, endpoint: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        if endpoint == "chat":
            capped.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=CAP + 1
            )
        else:
            capped.completions.create(model="tiny", prompt="Hi", max_tokens=CAP + 1)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "max_tokens"
    assert error["type"] == "invalid_request_error"
    assert f"at most {CAP} tokens" in error["message"]
    # within the cap is fine
    answer = capped.completions.create(model="tiny", prompt="Hi", max_tokens=CAP)
    assert answer.usage is not None and answer.usage.completion_tokens == CAP


def _queued(settings: Settings) -> int:
    """Jobs ever added to the model's stream (its last entry id's sequence grows with each)."""
    assert settings.redis_url
    info = sync_client(settings.redis_url).xinfo_stream(Keys(settings.key_prefix).jobs("tiny"))
    return int(info["entries-added"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 60_000}]}, "messages"),
        ("/v1/completions", {"prompt": "word " * 60_000}, "prompt"),
        ("/v1/completions", {"prompt": [5] * 5000}, "prompt"),  # token ids past the 4,096 of the context
    ],
    ids=["chat", "completion", "token ids"],
)
def test_a_prompt_far_over_the_context_never_reaches_a_worker(
    stack: Stack, settings: Settings, path: str, body: dict[str, Any], param: str
) -> None:
    """300,000 characters cannot be 4,096 tokens: refused by the API before any worker tokenises them."""
    httpx.post(f"{stack.base_url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    before = _queued(settings)
    r = httpx.post(f"{stack.base_url}{path}", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = openai_error(r.json())
    assert (error.code, error.param) == ("context_length_exceeded", param)
    assert _queued(settings) == before


HUGE = "word " * 2_000_000  # 10,000,000 characters


@pytest.mark.parametrize(
    ("kind", "fields", "chars"),
    [
        (JobKind.COMPLETION, {"prompt": HUGE}, len(HUGE)),
        (JobKind.CHAT, {"messages": [{"role": "user", "content": HUGE}]}, len(HUGE) + len("user")),
        (JobKind.TOKENIZE, {"prompt": HUGE}, len(HUGE)),  # /tokenize counts with a worker's tokenizer too
    ],
    ids=["completion", "chat", "tokenize"],
)
def test_a_worker_refuses_a_huge_prompt_without_tokenising_it(
    stack: Stack, settings: Settings, kind: JobKind, fields: dict[str, Any], chars: int
) -> None:
    """A job that reaches a worker past the API's bound (another front end, an older API): refused from its length,
    with the characters-based error (a tokenised prompt's error counts tokens)."""

    async def run() -> str:
        producer = Producer(async_client(str(settings.redis_url)), settings)
        try:
            job = Job(kind=kind, model="tiny", deadline=time.time() + 60, **fields)
            events = await producer.submit(job)
            with pytest.raises(JobFailed) as caught:
                await events.next_event()
            assert caught.value.code == "context_length_exceeded"
            return caught.value.message
        finally:
            await producer.close()

    message = asyncio.run(run())
    assert f"{chars} characters cannot fit" in message
    # and the worker serves on
    ok = httpx.post(f"{stack.base_url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_body_over_the_request_cap_is_a_413(
    settings: Settings, start_api: Callable[..., ApiServer], path: str
) -> None:
    api = start_api(settings.model_copy(update={"max_request_bytes": 2**20}))
    body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 2**21}]}
    r = httpx.post(f"{api.base_url}{path}", json=body, timeout=30)
    assert r.status_code == 413, r.text
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "request_too_large"
    else:
        assert openai_error(r.json()).code == "request_too_large"
    # sent in chunks, without a Content-Length, it is counted as it arrives
    chunks = (b"x" * 2**16 for _ in range(40))
    r = httpx.post(f"{api.base_url}/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
