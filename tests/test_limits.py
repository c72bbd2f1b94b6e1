"""What a request gets when it leaves max_tokens out, and the server-side bounds on what it may ask for."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, Stack, wait_for

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
