"""vLLM's extra request parameters, as its benchmark clients (guidellm, aiperf) and users send them, through the
real stack with the tiny model on every engine: ignore_eos, min_tokens, logit_bias, allowed_token_ids,
include_stop_str_in_output, stop_reason, stream_options.continuous_usage_stats, and the chat extras (echo,
add_generation_prompt, continue_final_message, chat_template_kwargs, guided_json).

The tiny model's answers are random, so each test forces what it checks: a bias of +100 makes a token all but
certain, which is how EOS, a stop token or a stop string is made to come when the test wants it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from transformers import AutoTokenizer

from tests.conftest import Stack
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)
from tests.openai_error import openai_error

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def ids(tiny_model_dir: Path) -> dict[str, int]:
    """Token ids of the tiny tokenizer: its EOS and two one-letter tokens."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    a, b = cast(list[int], tokenizer.convert_tokens_to_ids(["a", "b"]))
    return {"eos": int(tokenizer.eos_token_id), "a": int(a), "b": int(b)}


def test_ignore_eos_generates_exactly_max_tokens(client: openai.OpenAI, ids: dict[str, int]) -> None:
    # the tiny model all but never says EOS (its logit is -1e5); allowing nothing else makes it say nothing else
    only_eos = {"allowed_token_ids": [ids["eos"]]}
    ended = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, extra_body=only_eos)
    assert ended.choices[0].finish_reason == "stop"
    assert ended.choices[0].stop_reason is None  # type: ignore[attr-defined]  # EOS, not a stop the client named
    assert ended.usage is not None and ended.usage.completion_tokens < 12
    full = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=12, extra_body={**only_eos, "ignore_eos": True}
    )
    assert full.choices[0].finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == 12


def test_min_tokens_holds_back_a_stop_string(client: openai.OpenAI, ids: dict[str, int]) -> None:
    r = client.completions.create(
        model="tiny", prompt="x", max_tokens=20, logit_bias={str(ids["a"]): 100}, stop=["a"],
        extra_body={"min_tokens": 4},
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.stop_reason == "a"  # type: ignore[attr-defined]
    assert choice.text == "aaa"  # the fourth "a" is the first one looked at


def test_min_tokens_holds_back_a_stop_token_and_stop_reason_names_it(
    client: openai.OpenAI, ids: dict[str, int]
) -> None:
    a = ids["a"]
    r = client.completions.create(
        model="tiny",
        prompt="x",
        max_tokens=20,
        temperature=0,
        logit_bias={str(a): 100},
        extra_body={"min_tokens": 4, "stop_token_ids": [a]},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.stop_reason == a  # type: ignore[attr-defined]
    assert r.usage is not None and r.usage.completion_tokens >= 4


def test_stop_reason_names_the_stop_string_and_include_stop_str_keeps_it(
    client: openai.OpenAI, ids: dict[str, int]
) -> None:
    forced_a = {str(ids["a"]): 100}
    cut = client.completions.create(model="tiny", prompt="x", max_tokens=8, logit_bias=forced_a, stop=["aa"])
    assert cut.choices[0].text == ""
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].stop_reason == "aa"  # type: ignore[attr-defined]
    kept = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=8,
        logit_bias=forced_a,
        stop=["aa"],
        extra_body={"include_stop_str_in_output": True},
    )
    assert kept.choices[0].message.content == "aa"
    assert kept.choices[0].stop_reason == "aa"  # type: ignore[attr-defined]
    plain = client.completions.create(model="tiny", prompt="x", max_tokens=3, extra_body={"ignore_eos": True})
    assert plain.choices[0].finish_reason == "length"
    assert plain.choices[0].stop_reason is None  # type: ignore[attr-defined]


def test_logit_bias_forces_and_bans(client: openai.OpenAI, ids: dict[str, int]) -> None:
    a, b = ids["a"], ids["b"]
    forced = client.completions.create(model="tiny", prompt="x", max_tokens=6, temperature=1.0,
                                       logit_bias={str(a): 100})  # fmt: skip
    assert forced.choices[0].text == "a" * 6
    # of the two allowed tokens, banning one leaves only the other, greedy or sampled
    for temperature in (0.0, 1.0):
        banned = client.completions.create(
            model="tiny",
            prompt="x",
            max_tokens=6,
            temperature=temperature,
            logit_bias={str(a): -100},
            extra_body={"allowed_token_ids": [a, b]},
        )
        assert banned.choices[0].text == "b" * 6


def test_allowed_token_ids_restrict_the_output(client: openai.OpenAI, ids: dict[str, int]) -> None:
    r = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=16,
        temperature=1.5,
        n=3,
        extra_body={"allowed_token_ids": [ids["a"], ids["b"]], "ignore_eos": True},
    )
    for choice in r.choices:
        text = choice.message.content or ""
        assert len(text) == 16 and set(text) <= {"a", "b"}


def test_continuous_usage_stats_put_usage_on_every_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert counts == sorted(counts)  # the usage so far
    assert chunks[-1].choices == [] and counts[-1] == 10
    assert len({c.usage.prompt_tokens for c in chunks if c.usage is not None}) == 1


def test_continuous_usage_stats_on_completions(stack: Stack) -> None:
    body = {
        "model": "tiny",
        "prompt": "x",
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"continuous_usage_stats": True},
    }
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json=body, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events and all("usage" in e for e in events)
    assert events[-1]["usage"]["completion_tokens"] == 5


def test_chat_echo_continues_the_final_message(client: openai.OpenAI) -> None:
    opening = "Once upon a time"
    messages: Any = [{"role": "user", "content": "tell a story"}, {"role": "assistant", "content": opening}]
    extra = {"echo": True, "add_generation_prompt": False, "continue_final_message": True}
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, extra_body=extra)
    assert (whole.choices[0].message.content or "").startswith(opening)
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=4, stream=True, extra_body=extra
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith(opening)
    # without echo the answer is only what was generated after the opening
    plain = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
    )
    assert not (plain.choices[0].message.content or "").startswith(opening)


def test_continue_final_message_leaves_the_turn_open(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "tell a story"}, {"role": "assistant", "content": "Once"}]
    closed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    opened = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=1,
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    )
    assert closed.usage is not None and opened.usage is not None
    # ChatML: no <|im_end|> and newline after "Once", no "<|im_start|>assistant\n" after that
    assert opened.usage.prompt_tokens < closed.usage.prompt_tokens


def test_chat_template_kwargs_reach_the_template(client: openai.OpenAI) -> None:
    # ChatML ignores unknown variables (enable_thinking is what Qwen3 clients send): the request is served
    r = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=2, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_guided_json_gives_json(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=40, extra_body={"guided_json": schema}, temperature=0
    )
    content = r.choices[0].message.content or ""
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content)["n"], int)
    else:
        assert content.startswith('{"n":')


def test_guided_regex_and_choice_constrain_the_output(client: openai.OpenAI) -> None:
    for temperature in (0.0, 1.0):
        r = client.completions.create(
            model="tiny", prompt="x", max_tokens=20, temperature=temperature, extra_body={"guided_regex": "ab{2,4}c"}
        )
        assert re.fullmatch("ab{2,4}c", r.choices[0].text), r.choices[0].text
        assert r.choices[0].finish_reason == "stop"
    choices = ["yes", "no", "maybe not"]
    chat = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=20, n=4, temperature=1.5, extra_body={"guided_choice": choices}
    )
    assert all(c.message.content in choices for c in chat.choices)
    chat = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=20, extra_body={"structured_outputs": {"choice": ["left", "right"]}}
    )
    assert chat.choices[0].message.content in ("left", "right")
    chat = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=20, extra_body={"structured_outputs": {"regex": "[0-9]{3}"}}
    )
    assert re.fullmatch("[0-9]{3}", chat.choices[0].message.content or "")


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"logit_bias": {"1": 101}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"1": -100.5}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"one": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": [1, 2]}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"1": "lots"}}, "logit_bias"),
    ("/v1/chat/completions", {"ignore_eos": "sure"}, "ignore_eos"),
    ("/v1/chat/completions", {"min_tokens": -1}, "min_tokens"),
    ("/v1/chat/completions", {"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ("/v1/chat/completions", {"allowed_token_ids": []}, "allowed_token_ids"),
    ("/v1/chat/completions", {"allowed_token_ids": [-2]}, "allowed_token_ids"),
    ("/v1/chat/completions", {"allowed_token_ids": "a"}, "allowed_token_ids"),
    ("/v1/chat/completions", {"include_stop_str_in_output": [True]}, "include_stop_str_in_output"),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"continuous_usage_stats": [1]}}, "stream_options"),
    ("/v1/chat/completions", {"echo": 3}, "echo"),
    ("/v1/chat/completions", {"continue_final_message": True}, "continue_final_message"),  # with the turn opened
    (
        "/v1/chat/completions",
        {"continue_final_message": True, "add_generation_prompt": False},
        "continue_final_message",
    ),  # the last message is the user's
    ("/v1/chat/completions", {"chat_template_kwargs": {"tokenize": False}}, "chat_template_kwargs"),
    ("/v1/chat/completions", {"chat_template_kwargs": ["x"]}, "chat_template_kwargs"),
    ("/v1/chat/completions", {"guided_json": "not a schema"}, "guided_json"),
    (
        "/v1/chat/completions",
        {"guided_json": {"type": "object"}, "response_format": {"type": "json_object"}},
        "guided_json",
    ),
    ("/v1/chat/completions", {"guided_regex": "("}, "guided_regex"),  # from the worker: llguidance's error
    ("/v1/completions", {"guided_regex": ""}, "guided_regex"),
    ("/v1/chat/completions", {"guided_choice": []}, "guided_choice"),
    ("/v1/chat/completions", {"guided_choice": ["a", ""]}, "guided_choice"),
    ("/v1/chat/completions", {"guided_choice": "a"}, "guided_choice"),
    ("/v1/completions", {"guided_choice": ["a"], "guided_regex": "a"}, "guided_regex"),
    ("/v1/chat/completions", {"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
    ("/v1/chat/completions", {"structured_outputs": {}}, "structured_outputs"),
    ("/v1/chat/completions", {"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ("/v1/completions", {"structured_outputs": {"choice": ["a"]}, "guided_json": {}}, "structured_outputs"),
    # still unsupported: refused by name
    ("/v1/chat/completions", {"guided_grammar": "start: a"}, "guided_grammar"),
    ("/v1/chat/completions", {"structured_outputs": {"grammar": "start: a"}}, "structured_outputs"),
    ("/v1/chat/completions", {"structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
    ("/v1/completions", {"prompt_logprobs": 1}, "prompt_logprobs"),
    ("/v1/completions", {"logit_bias": {"1": 200}}, "logit_bias"),
    ("/v1/completions", {"min_tokens": "3"}, "min_tokens"),
]


@pytest.mark.parametrize(("path", "extra", "param"), BAD, ids=[f"{p}:{e}" for p, e, _ in BAD])
def test_bad_extras_are_400_naming_the_parameter(stack: Stack, path: str, extra: dict[str, Any], param: str) -> None:
    base: dict[str, Any] = {"model": "tiny", "max_tokens": 2}
    base.update({"messages": MSG} if "chat" in path else {"prompt": "x"})
    r = httpx.post(f"{stack.base_url}{path}", json={**base, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    error = openai_error(r.json())
    assert error.param == param or param in error.message, error


@pytest.mark.parametrize("param", ["logit_bias", "allowed_token_ids"])
def test_token_ids_outside_the_vocabulary_are_400(stack: Stack, param: str) -> None:
    value: Any = {"100000": 1} if param == "logit_bias" else [100000]
    r = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "tiny", "messages": MSG, "max_tokens": 2, param: value},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert openai_error(r.json()).param == param
    ok = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 1})
    assert ok.status_code == 200


def test_cached_tokens_count_the_prefix_cache(client: openai.OpenAI) -> None:
    prompt = " ".join(f"word{i}" for i in range(120))  # several KV blocks
    # (the transformers engine keeps a prompt's blocks from the step after its prefill: not one token only)
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=4)
    twice = client.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    assert first.usage is not None and twice.usage is not None
    details = twice.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert 0 < details.cached_tokens < twice.usage.prompt_tokens
