"""Reasoning apart from the answer, and tool calls in each model's format, through the real stack: a scripted
worker says (in its ``accepted`` event) which parsers its model's output needs and sends a reasoning model's
output, read by the official clients as chat completions (``reasoning_content`` / ``reasoning``, whole and as
deltas of their own), Responses (a reasoning item) and Anthropic Messages (a thinking block). A real tiny worker
whose chat template opens ``<think>`` in the prompt answers in reasoning; an unknown parser name stops a worker
before it loads anything."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from broker.schemas import Accepted, Delta, Done, FinishReason, Usage
from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.integration.test_scripted_events import MESSAGES, MODEL, WEATHER, Script, scripted  # noqa: F401  (fixture)

THOUGHT = ["Paris is in France", "; it is sunny there", ".\n</th", "ink>\n\n", "It is sunny", " in Paris."]


def _script(pieces: list[str], **parsers: Any) -> Script:
    accepted = Accepted(seq=0, worker="scripted", attempt=1, prompt_tokens=4, **parsers)
    deltas = [Delta(seq=i + 1, text=text, token_ids=[i]) for i, text in enumerate(pieces)]
    done = Done(seq=len(pieces) + 1, finish_reason=FinishReason.STOP,
                usage=Usage(prompt_tokens=4, completion_tokens=len(pieces)))  # fmt: skip
    return [accepted, *deltas, done]


R1 = {"reasoning_parser": "deepseek_r1", "reasoning_open": True}  # DeepSeek-R1's template opens <think>


def _openai(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=30)


def test_chat_returns_reasoning_apart_whole_and_streamed(scripted: Callable[[list[Script]], str]) -> None:  # noqa: F811
    client = _openai(scripted([_script(THOUGHT, **R1), _script(THOUGHT, **R1)]))
    message = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message
    assert message.content == "It is sunny in Paris."
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == extra["reasoning"] == "Paris is in France; it is sunny there.\n"
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [(d.model_extra or {}).get("reasoning_content") for d in deltas]
    assert "".join(r for r in reasoning if r) == "Paris is in France; it is sunny there.\n"
    assert all(not (r and d.content) for r, d in zip(reasoning, deltas, strict=True))  # deltas of their own
    assert len([r for r in reasoning if r]) > 1  # streamed as it comes, not at the end
    assert "".join(d.content or "" for d in deltas) == "It is sunny in Paris."
    assert all("think>" not in (r or "") + (d.content or "") for r, d in zip(reasoning, deltas, strict=True))


def test_output_opening_think_itself_and_a_worker_without_a_parser(
    scripted: Callable[[list[Script]], str],  # noqa: F811
) -> None:
    opens = ["<think>", "Sunny.", "</think>", "Sunny in Paris."]
    client = _openai(scripted([_script(opens, reasoning_parser="qwen3"), _script(opens)]))
    message = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message
    assert (message.content, (message.model_extra or {}).get("reasoning_content")) == ("Sunny in Paris.", "Sunny.")
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message
    assert plain.content == "".join(opens) and "reasoning_content" not in (plain.model_extra or {})


def test_reasoning_then_a_qwen3_coder_call_streamed_as_openai_streams_calls(
    scripted: Callable[[list[Script]], str],  # noqa: F811
) -> None:
    call = ["I should look it up.</think>\n", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
            "is\n</parameter>\n</function>\n</tool_call>"]  # fmt: skip
    parsers = {**R1, "tool_call_parser": "qwen3_coder"}
    client = _openai(scripted([_script(call, **parsers), _script(call, **parsers)]))
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[WEATHER])
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert (choice.message.model_extra or {})["reasoning_content"] == "I should look it up."
    [called] = choice.message.tool_calls or []
    assert (called.function.name, json.loads(called.function.arguments)) == ("get_weather", {"city": "Paris"})
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[WEATHER], stream=True))
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    first, function = pieces[0], pieces[0].function
    assert (first.index, first.type, function.name, function.arguments) == (0, "function", "get_weather", "")
    assert first.id and first.id.startswith("call_")
    assert all(p.id is None and p.function.name is None for p in pieces[1:])
    assert json.loads("".join(p.function.arguments or "" for p in pieces[1:])) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


@pytest.mark.parametrize(
    ("parser", "output"),
    [
        ("mistral", ['[TOOL_CALLS][{"name": "get_weather", "argu', 'ments": {"city": "Pa', 'ris"}}]']),
        ("llama3_json", ['{"name": "get_weather", ', '"parameters": {"city": "Pa', 'ris"}}']),
        ("hermes", ['<tool_call>{"name": "get_weather", ', '"arguments": {"city": "Pa', 'ris"}}</tool_call>']),
    ],
)
def test_each_format_streams_its_calls_arguments_as_they_come(
    scripted: Callable[[list[Script]], str],  # noqa: F811
    parser: str,
    output: list[str],
) -> None:
    client = _openai(scripted([_script(output, tool_call_parser=parser)]))
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[WEATHER], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""
    pieces = [tc for d in deltas for tc in d.tool_calls or []]
    assert pieces[0].function.name == "get_weather" and pieces[0].function.arguments == ""
    fragments = [p.function.arguments for p in pieces[1:]]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == {"city": "Paris"}


def test_responses_have_a_reasoning_item_before_the_message(scripted: Callable[[list[Script]], str]) -> None:  # noqa: F811
    client = _openai(scripted([_script(THOUGHT, **R1), _script(THOUGHT, **R1), _script(["</think>Yes."], **R1)]))
    response = client.responses.create(model=MODEL, input="Weather in Paris?")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [c.text for c in reasoning.content or []] == ["Paris is in France; it is sunny there.\n"]
    assert response.output_text == "It is sunny in Paris."
    events = list(client.responses.create(model=MODEL, input="Weather in Paris?", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.reasoning_text.delta"]  # fmt: skip
    done_at = kinds.index("response.reasoning_text.done")
    assert kinds[done_at : done_at + 4] == ["response.reasoning_text.done", "response.content_part.done",
                                            "response.output_item.done", "response.output_item.added"]  # fmt: skip
    assert "response.output_text.delta" not in kinds[:done_at]
    text = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert text == "Paris is in France; it is sunny there.\n"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert [item.type for item in completed.response.output] == ["reasoning", "message"]
    # the output sent back as the next turn's input, as the Agents SDK sends a conversation, reasoning items too
    turn = [*(item.model_dump(exclude_none=True) for item in response.output), {"role": "user", "content": "Sure?"}]
    assert client.responses.create(model=MODEL, input=turn).output_text == "Yes."


def test_anthropic_messages_have_a_thinking_block_first(scripted: Callable[[list[Script]], str]) -> None:  # noqa: F811
    base_url = scripted([_script(THOUGHT, **R1), _script(THOUGHT, **R1), _script(["</think>", "Yes."], **R1)])
    client = anthropic.Anthropic(base_url=base_url, api_key="none", max_retries=0, timeout=30)
    message = client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Paris is in France; it is sunny there.\n"
    assert text.type == "text" and text.text == "It is sunny in Paris."
    with client.messages.stream(model=MODEL, max_tokens=16, messages=MESSAGES) as stream:
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["thinking", "text"]
    assert streamed.content[0].thinking == thinking.thinking
    # the thinking block sent back with the turn it came in is accepted (and left out of the prompt)
    turn = [*MESSAGES, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
            {"role": "user", "content": "Sure?"}]  # fmt: skip
    again = client.messages.create(model=MODEL, max_tokens=16, messages=turn)
    assert again.content[-1].type == "text"


def think_template(tmp_path: Path) -> str:
    """A chat template that opens the assistant's turn with ``<think>``, as DeepSeek-R1's does."""
    path = tmp_path / "think.jinja"
    path.write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
    )
    return str(path)


def test_a_template_that_opens_think_makes_a_tiny_models_output_reasoning(
    start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer], tmp_path: Path
) -> None:
    """The random model never closes the block its template opened: all it writes is reasoning, no answer."""
    worker = start_worker(conv_template=think_template(tmp_path), reasoning_parser="deepseek_r1")
    assert worker.worker.registration.card.reasoning_parser == "deepseek_r1"
    api = start_api()
    client = _openai(api.base_url)
    wait_for(lambda: client.models.list().data)
    ask: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    message = client.chat.completions.create(**ask).choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content")
    assert message.content is None and reasoning
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--tool-call-parser", "json", "hermes, llama3_json"), ("--reasoning-parser", "r1", "deepseek_r1, qwen3")],
)
def test_an_unknown_parser_stops_the_worker_at_startup(flag: str, value: str, named: str) -> None:
    from queuechat.cli import app

    result = CliRunner().invoke(app, ["worker", "--redis-url", "redis://127.0.0.1:1", flag, value])
    assert result.exit_code == 2, result.output
    said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # typer draws the error in a box
    assert f"{flag} {value!r}" in said and named in said
