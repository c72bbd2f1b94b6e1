"""vLLM's /tokenize and /detokenize: the ids generation sees, counted by a worker with the model's own tokenizer."""

from __future__ import annotations

import httpx

from tests.conftest import Stack
from tests.openai_error import openai_error

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, how are you?"}]


def post(stack: Stack, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", json=body, timeout=30)


def test_tokenize_a_prompt_matches_what_generation_counts(stack: Stack) -> None:
    prompt = "Hello there, how are you?"
    r = post(stack, "/tokenize", {"model": "tiny", "prompt": prompt, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    usage = post(stack, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 1}).json()["usage"]
    assert body["count"] == len(body["tokens"]) == usage["prompt_tokens"]
    assert body["max_model_len"] > body["count"]
    assert len(body["token_strs"]) == body["count"]
    assert all(isinstance(t, str) and t for t in body["token_strs"])


def test_detokenize_gives_back_the_text(stack: Stack) -> None:
    text = "The capital of France is Paris."
    tokens = post(stack, "/tokenize", {"model": "tiny", "prompt": text, "add_special_tokens": False}).json()["tokens"]
    r = post(stack, "/detokenize", {"model": "tiny", "tokens": tokens})
    assert r.status_code == 200, r.text
    assert r.json() == {"prompt": text}


def test_tokenize_messages_matches_the_chat_prompt(stack: Stack) -> None:
    r = post(stack, "/tokenize", {"model": "tiny", "messages": MESSAGES})
    assert r.status_code == 200, r.text
    chat = post(stack, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 1})
    assert r.json()["count"] == chat.json()["usage"]["prompt_tokens"]
    without_turn = post(stack, "/tokenize", {"model": "tiny", "messages": MESSAGES, "add_generation_prompt": False})
    assert without_turn.json()["count"] < r.json()["count"]
    # the template's own text, read back: the conversation, then the assistant's turn opened
    text = post(stack, "/detokenize", {"model": "tiny", "tokens": r.json()["tokens"]}).json()["prompt"]
    assert "Hello there, how are you?" in text and text.rstrip().endswith("assistant")


def test_the_model_may_be_left_out_when_one_is_served(stack: Stack) -> None:
    named = post(stack, "/tokenize", {"model": "tiny", "prompt": "Hi"}).json()
    assert post(stack, "/tokenize", {"prompt": "Hi"}).json() == named
    assert post(stack, "/detokenize", {"tokens": named["tokens"]}).status_code == 200


def test_errors_name_what_was_wrong(stack: Stack) -> None:
    """The table in test_bad_input covers the statuses; here, that each error names its parameter."""
    unknown = post(stack, "/tokenize", {"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404 and openai_error(unknown.json()).param == "model"
    beyond = post(stack, "/detokenize", {"model": "tiny", "tokens": [10**9]})
    assert beyond.status_code == 400 and openai_error(beyond.json()).param == "tokens"
    both = post(stack, "/tokenize", {"model": "tiny", "prompt": "x", "stream": True})
    assert both.status_code == 400, both.text  # an unknown field, as everywhere else
