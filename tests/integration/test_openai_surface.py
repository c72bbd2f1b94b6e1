"""The OpenAI surface, checked with the official client the way vLLM's own OpenAI tests check it: logprobs,
n, usage, echo, best_of, penalties, JSON output and function calling. The tiny model's answers are random but
deterministic; every check here holds whatever the model says."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.conftest import Stack
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)

MSG = [{"role": "user", "content": "Say something."}]
PROMPT = "Once upon a time"


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def test_chat_logprobs_none_zero_five(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5)
    assert plain.choices[0].logprobs is None
    for top in (0, 5):
        reply = client.chat.completions.create(
            model="tiny",
            messages=MSG,
            max_tokens=5,
            logprobs=True,
            top_logprobs=top,
        )
        entries = reply.choices[0].logprobs.content
        assert entries is not None and len(entries) == reply.usage.completion_tokens
        # the content is the tokens' bytes (bytes that make no character show as U+FFFD in the content)
        spelled = b"".join(bytes(e.bytes or []) for e in entries).decode("utf-8", errors="ignore")
        # a sampled special token is named in the logprobs but, as in vLLM, left out of the content
        for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
            spelled = spelled.replace(special, "")
        assert spelled == (reply.choices[0].message.content or "").replace("\ufffd", "")
        for entry in entries:
            assert len(entry.top_logprobs) == top
            assert entry.logprob <= 0
            assert [t.logprob for t in entry.top_logprobs] == sorted(
                (t.logprob for t in entry.top_logprobs), reverse=True
            )


def test_greedy_token_is_the_top_alternative(client: openai.OpenAI) -> None:
    """Logprobs are the model's raw distribution, so at temperature 0 the chosen token is always its top one."""
    reply = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    for entry in reply.choices[0].logprobs.content:
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-5)


def test_completion_logprobs_none_zero_five(client: openai.OpenAI) -> None:
    assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5).choices[0].logprobs is None
    for top in (0, 5):
        choice = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, logprobs=top).choices[0]
        logprobs = choice.logprobs
        assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs and logprobs.text_offset
        assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
        # the chosen token is always listed; with 5 alternatives it is one of them or a sixth
        assert all(top <= len(alternatives) <= top + 1 for alternatives in logprobs.top_logprobs)
        if not any(t.startswith("bytes:") for t in logprobs.tokens):  # a fragment of a character is named by bytes
            assert "".join(logprobs.tokens) == choice.text


def test_too_many_logprobs_is_400_and_the_server_keeps_serving(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, logprobs=6)
    assert caught.value.body["param"] == "logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny",
            messages=MSG,
            max_tokens=5,
            logprobs=True,
            top_logprobs=21,
        )
    assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3).choices[0].finish_reason == "length"


def test_echo_with_logprobs_covers_prompt_and_answer(client: openai.OpenAI) -> None:
    choice = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, echo=True, logprobs=1).choices[0]
    assert choice.text.startswith(PROMPT)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.text_offset
    if not any(t.startswith("bytes:") for t in logprobs.tokens):  # a fragment of a character is named by bytes
        assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset)
    assert logprobs.token_logprobs[0] is None  # nothing predicts the first token
    assert all(lp is not None for lp in logprobs.token_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_echo_of_token_ids_spells_the_prompt(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode(PROMPT)
    choice = client.completions.create(model="tiny", prompt=ids, max_tokens=1, echo=True, logprobs=0).choices[0]
    assert choice.text.startswith(PROMPT)  # the worker's tokens spell the prompt back


def test_n_choices_streamed_and_not(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, n=3)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    stream = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, n=3, stream=True)
    finishes: dict[int, list[str]] = {0: [], 1: [], 2: []}
    roles: dict[int, str | None] = {}
    ids = set()
    for chunk in stream:
        ids.add(chunk.id)
        for choice in chunk.choices:
            roles.setdefault(choice.index, choice.delta.role)  # the first delta of each choice
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert finishes == {0: ["length"], 1: ["length"], 2: ["length"]}  # exactly once per choice
    assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}
    assert len(ids) == 1  # one id in every chunk


def test_include_usage_final_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="tiny", prompt=[PROMPT, "Hello"], max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 8
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_best_of_returns_the_likeliest(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, n=2, best_of=4, logprobs=0, seed=7)
    assert [c.index for c in reply.choices] == [0, 1]
    totals = [sum(c.logprobs.token_logprobs or []) for c in reply.choices]
    assert totals == sorted(totals, reverse=True)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, n=3, best_of=2)
    assert caught.value.body["param"] == "best_of"  # type: ignore[index]


def test_suffix_is_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=PROMPT, suffix="the end", max_tokens=3)
    assert caught.value.body["param"] == "suffix"  # type: ignore[index]


def test_penalties_change_greedy_output(client: openai.OpenAI) -> None:
    def answer(**penalty: float) -> list[str]:
        reply = client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            logprobs=0,
            extra_body=penalty,  # repetition_penalty is not among the client's own arguments
        )
        logprobs = reply.choices[0].logprobs
        assert logprobs is not None and logprobs.tokens is not None
        return logprobs.tokens

    plain = answer()
    assert answer() == plain  # greedy is deterministic, so any difference below is the penalty's doing
    assert len(set(plain)) < len(plain), "the tiny model is expected to repeat itself without a penalty"
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 2.0}):
        penalised = answer(**penalty)
        assert penalised != plain, penalty
        assert len(set(penalised)) >= len(set(plain)), penalty


def test_json_schema_output_is_valid_json(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert data["answer"] in ("yes", "no") and isinstance(data["sure"], bool)
    assert reply.choices[0].finish_reason == "stop"


def test_invalid_json_schema_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny",
            messages=MSG,
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}},
        )
    assert caught.value.body["param"] == "response_format"  # type: ignore[index]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC"]}},
            "required": ["zone"],
            "additionalProperties": False,  # else a random model may invent keys until max_tokens
        },
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_returns_a_parsed_call(client: openai.OpenAI, stream: bool) -> None:
    kwargs = {
        "model": "tiny",
        "messages": MSG,
        "max_tokens": 40,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    if stream:
        calls: list[Any] = []
        finish = None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                calls += choice.delta.tool_calls or []
                finish = choice.finish_reason or finish
        call = calls[0].function  # the first piece has the name, the next ones fragments of the arguments
        call.arguments = "".join(c.function.arguments for c in calls)
    else:
        reply = client.chat.completions.create(**kwargs)
        assert reply.choices[0].message.content is None
        call = reply.choices[0].message.tool_calls[0].function
        finish = reply.choices[0].finish_reason
    assert call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert arguments["city"] in ("Paris", "Oslo") and arguments["unit"] in ("C", "F")
    assert finish == "tool_calls"


def test_required_tool_choice_calls_one_of_the_tools(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=60,
        tools=[WEATHER, TIME],
        tool_choice="required",
    )
    call = reply.choices[0].message.tool_calls[0].function
    assert call.name in ("get_weather", "get_time")
    json.loads(call.arguments)


def test_tool_choice_must_name_a_given_tool(stack: Stack) -> None:
    body = {
        "model": "tiny",
        "messages": MSG,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}},
    }
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_hermes_tool_calls_are_parsed_from_text() -> None:
    from serving.parsers import call_parser
    from serving.parsers.calls import read_whole

    content, calls = read_whole(
        call_parser("hermes"),
        'Let me check.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>',
    )
    assert content == "Let me check.\n"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_time", {"zone": "UTC"})]
    not_json = "<tool_call>not json</tool_call>"
    assert read_whole(call_parser("hermes"), not_json) == (not_json, [])


def test_a_one_megabyte_prompt_is_refused_before_the_model(stack: Stack) -> None:
    prompt = "lorem ipsum " * (2**20 // 12)
    r = httpx.post(f"{stack.base_url}/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 1})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert stack.worker.worker.engine.running == 0  # nothing reached the engine
    assert stack.worker.worker.totals["completed"] == 0


def test_earlier_tool_calls_reach_a_template_without_tool_support(tiny_model_dir: Path) -> None:
    """The tiny model's ChatML template renders only content: a call made earlier must still be in the prompt."""
    from workers.prompts import chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
    ]  # fmt: skip
    prompt = tokenizer.decode(chat_prompt_ids(tokenizer, history, tools=[WEATHER]))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>' in prompt
    assert "-3 C" in prompt and "get_weather" in prompt.split("<tool_call>")[0]  # the tools are described too
