"""The reasoning and tool-call parsers on text alone: each format read whole and streamed a character at a time,
the stream sending what OpenAI sends (a call's name first, then fragments of its arguments that add up to them),
the tool-call format picked from a chat template, and unknown parser names refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serving.parsers import call_parser, check_reasoning_parser, tool_call_parser_for
from serving.parsers.calls import CallArguments, CallBegin, Piece, read_whole
from serving.parsers.think import ReasoningSplitter, prompt_opens_reasoning, split_reasoning

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}
PARIS = {"city": "Paris", "days": 3}

# (format, output, content, calls): one of each way each format writes calls
CASES: list[tuple[str, str, str, list[tuple[str, dict[str, Any]]]]] = [
    ("hermes", 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
     "</tool_call>", "Let me look.\n", [("get_weather", PARIS)]),
    ("hermes", '<tool_call>{"name": "a", "arguments": {"s": "}{\\""}}</tool_call>\n<tool_call>{"arguments": {},'
     ' "name": "b"}</tool_call>', "\n", [("a", {"s": '}{"'}), ("b", {})]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}; '
     '{"name": "b", "parameters": {}}', "", [("get_weather", PARIS), ("b", {})]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}', "",
     [("get_weather", PARIS)]),
    ("mistral", 'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, '
     '{"name": "b", "arguments": {"x": [1, "]"]}}]', "Sure.", [("get_weather", PARIS), ("b", {"x": [1, "]"]})]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}[TOOL_CALLS]b[CALL_ID]a1B2c3D4e[ARGS]{}',
     "", [("get_weather", PARIS), ("b", {})]),
    ("qwen3_coder", "I will check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>", "I will check.\n", [("get_weather", PARIS)]),
]  # fmt: skip


def _streamed(parser_name: str, text: str) -> list[Piece]:
    parser = call_parser(parser_name, [WEATHER_TOOL])
    pieces: list[Piece] = []
    for char in text:
        pieces += parser.feed(char)
    return pieces + parser.finish()


@pytest.mark.parametrize(("name", "output", "content", "calls"), CASES)
def test_calls_are_read_whole(name: str, output: str, content: str, calls: list[tuple[str, Any]]) -> None:
    read_content, found = read_whole(call_parser(name, [WEATHER_TOOL]), output)
    assert read_content == content
    assert [(f.name, json.loads(f.arguments)) for f in found] == calls


@pytest.mark.parametrize(("name", "output", "content", "calls"), CASES)
def test_calls_stream_name_first_then_argument_fragments(
    name: str, output: str, content: str, calls: list[tuple[str, Any]]
) -> None:
    pieces = _streamed(name, output)
    assert "".join(p for p in pieces if isinstance(p, str)) == content
    begins = [p for p in pieces if isinstance(p, CallBegin)]
    assert [(b.index, b.name) for b in begins] == [(i, n) for i, (n, _) in enumerate(calls)]
    for index, (_, arguments) in enumerate(calls):
        at = pieces.index(begins[index])
        fragments = [p for p in pieces if isinstance(p, CallArguments) and p.index == index]
        assert all(pieces.index(f) > at for f in fragments)  # the name comes before any of its arguments
        assert json.loads("".join(f.fragment for f in fragments)) == arguments
    if name != "qwen3_coder":  # JSON arguments stream as they are generated, not whole at the end
        assert len([p for p in pieces if isinstance(p, CallArguments) and p.index == 0]) > 1


@pytest.mark.parametrize(
    ("name", "output"),
    [
        ("hermes", "<tool_call>not json</tool_call> after"),
        ("hermes", 'a <tool_call>{"name": "f"} b'),  # no closing tag, no arguments: text after all
        ("llama3_json", '{"answer": 42}'),
        ("llama3_json", 'The JSON is {"name": "f", "parameters": {}}'),  # calls only as the whole answer
        ("mistral", "[TOOL_CALLS] nothing"),
        ("qwen3_coder", "<tool_call>\n<parameter=x>1</parameter>\n</tool_call>"),
    ],
)
def test_text_that_is_no_call_stays_content(name: str, output: str) -> None:
    assert read_whole(call_parser(name), output) == (output, [])
    assert "".join(p for p in _streamed(name, output) if isinstance(p, str)) == output


def test_qwen3_coder_values_follow_the_tool_schema() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {
        "zip": {"type": "string"}, "n": {"type": "number"}, "tags": {"type": "array"}, "free": {}}}}}  # fmt: skip
    body = (
        "<tool_call><function=f><parameter=zip>\n01234\n</parameter><parameter=n>\n2.5\n</parameter>"
        '<parameter=tags>\n["a"]\n</parameter><parameter=free>\nnot json\n</parameter></function></tool_call>'
    )
    _, [found] = read_whole(call_parser("qwen3_coder", [tool]), body)
    assert json.loads(found.arguments) == {"zip": "01234", "n": 2.5, "tags": ["a"], "free": "not json"}


def test_a_call_cut_short_ends_where_it_was() -> None:
    """Streamed, a call whose arguments were being sent stays a call (the finish reason says it was cut short);
    whole, it is no call."""
    cut = '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    pieces = _streamed("hermes", cut)
    assert [p.name for p in pieces if isinstance(p, CallBegin)] == ["get_weather"]
    assert "".join(p.fragment for p in pieces if isinstance(p, CallArguments)) == '{"city": "Par'
    assert read_whole(call_parser("hermes"), cut) == (cut, [])


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ '<tool_call>' }}{% for t in tools %}{{ t | tojson }}{% endfor %}", "hermes"),
        ("<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>", "qwen3_coder"),
        ("{{ '[TOOL_CALLS]' + tool_calls | tojson }}", "mistral"),
        ("{{- '<|python_tag|>' + tool_call.name }}", "llama3_json"),
        ('Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}',
         "llama3_json"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes"),  # no tools: the worker's Hermes prompt
    ],
)  # fmt: skip
def test_auto_picks_the_format_the_chat_template_names(template: str, expected: str) -> None:
    assert tool_call_parser_for("auto", template) == expected
    assert tool_call_parser_for("mistral", template) == "mistral"  # a named parser is kept


def test_unknown_parser_names_are_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral, qwen3_coder"):
        tool_call_parser_for("json", None)
    with pytest.raises(ValueError, match="deepseek_r1, qwen3"):
        check_reasoning_parser("think")


@pytest.mark.parametrize(
    ("output", "opened", "reasoning", "answer"),
    [
        ("<think>\nHmm, 2+2.\n</think>\n\nIt is 4.", False, "\nHmm, 2+2.\n", "It is 4."),
        ("Hmm, 2+2.\n</think>\n\nIt is 4.", True, "Hmm, 2+2.\n", "It is 4."),
        ("Hmm, 2+2 is", True, "Hmm, 2+2 is", ""),  # cut short while thinking: all reasoning
        ("It is 4.", False, None, "It is 4."),
        ("It is 4. <think>no</think>", False, None, "It is 4. <think>no</think>"),  # only at the start
        ("<thi", False, None, "<thi"),
    ],
)
def test_reasoning_is_split_from_the_answer(output: str, opened: bool, reasoning: str | None, answer: str) -> None:
    assert split_reasoning("deepseek_r1", output, opened=opened) == (reasoning, answer)
    splitter = ReasoningSplitter("qwen3", opened=opened)
    pieces = [p for char in output for p in splitter.feed(char)] + splitter.finish()
    assert ("".join(p.text for p in pieces if p.reasoning) or None) == reasoning
    assert "".join(p.text for p in pieces if not p.reasoning) == answer
    assert all("<" not in p.text for p in pieces if p.reasoning)  # no part of a tag is sent as reasoning


@pytest.mark.parametrize(
    ("tail", "opened"),
    [
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # Qwen3 with enable_thinking=False
        ("<think>old</think><|im_start|>assistant\n", False),
        ("<|im_start|>assistant\n", False),
    ],
)
def test_a_prompt_that_opens_think_starts_the_output_inside_it(tail: str, opened: bool) -> None:
    assert prompt_opens_reasoning("qwen3", tail) is opened


def test_mistral_workers_keep_special_tokens_in_the_text_of_jobs_with_tools(tiny_model_dir: Path) -> None:
    """Mistral's ``[TOOL_CALLS]`` is a special token, which decoding leaves out: a worker with that parser keeps
    special tokens in the text of jobs offered tools (and only there), as vLLM does."""
    from transformers import AutoTokenizer

    from broker.schemas import Job, JobKind
    from workers.parsing import OutputParsers
    from workers.textstream import TextStream

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")  # the tiny tokenizer's stand-in for [TOOL_CALLS]
    with_tools = Job(kind=JobKind.CHAT, model="m", messages=[], tools=[WEATHER_TOOL], deadline=0)
    without = Job(kind=JobKind.CHAT, model="m", messages=[], deadline=0)
    mistral, hermes = OutputParsers(tool_calls="mistral"), OutputParsers(tool_calls="hermes")
    assert mistral.keeps_special_tokens(with_tools)
    assert not mistral.keeps_special_tokens(without) and not hermes.keeps_special_tokens(with_tools)
    kept = TextStream(tokenizer, skip_special_tokens=not mistral.keeps_special_tokens(with_tools))
    assert kept.feed([special]) == "<|im_start|>"
    assert TextStream(tokenizer).feed([special]) == ""
