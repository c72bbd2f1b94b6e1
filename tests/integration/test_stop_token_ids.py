"""``stop_token_ids`` the model has no such token for are refused with vLLM's 400, in OpenAI's error shape, by the
worker (only it knows the vocabulary); ids inside the vocabulary still work."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Stack
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)

MSG = [{"role": "user", "content": "Say something."}]
OUTSIDE = 10**6  # the tiny model's vocabulary is far smaller


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stop_token_ids_outside_the_vocabulary_are_a_400(client: openai.OpenAI, endpoint: str) -> None:
    extra = {"stop_token_ids": [2, OUTSIDE]}
    with pytest.raises(openai.BadRequestError) as caught:
        if endpoint == "chat":
            client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, extra_body=extra)
        else:
            client.completions.create(model="tiny", prompt="Once", max_tokens=3, extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "stop_token_ids"
    assert error["type"] == "invalid_request_error" and str(OUTSIDE) in error["message"]


def test_stop_token_ids_inside_the_vocabulary_are_accepted(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt="Once", max_tokens=3, extra_body={"stop_token_ids": [2]})
    assert reply.choices[0].finish_reason in ("stop", "length")
