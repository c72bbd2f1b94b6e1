"""Forced tool calls as real clients make them: pydantic models with nested models as tool parameters, calls cut
short by max_tokens, and call arguments streamed as they are generated. The tiny model's output is random, so
every tool here has parameters a grammar can finish in a few tokens (enums, no free strings)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.conftest import Stack
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)

MSG = [{"role": "user", "content": "Book a room for Ann."}]


class Guest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["Ann", "Bob"]
    adult: bool


class Booking(BaseModel):
    """What pydantic-based clients (instructor, pydantic-ai, openai-agents) send: the nested model lands in the
    schema's ``$defs`` and is used through ``{"$ref": "#/$defs/Guest"}``."""

    model_config = ConfigDict(extra="forbid")
    guest: Guest
    room: Literal["single", "double"]


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


BOOK = tool("book_room", Booking.model_json_schema())
CANCEL = tool(
    "cancel",
    {"type": "object", "properties": {"room": {"enum": ["single", "double"]}}, "required": ["room"],
     "additionalProperties": False},
)  # fmt: skip


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def test_pydantic_schema_has_local_refs() -> None:
    schema = Booking.model_json_schema()
    assert "Guest" in schema["$defs"] and schema["properties"]["guest"] == {"$ref": "#/$defs/Guest"}


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_forced_call_follows_nested_pydantic_parameters(client: openai.OpenAI, choice: str) -> None:
    tool_choice: Any = "required" if choice == "required" else {"type": "function", "function": {"name": "book_room"}}
    reply = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=80,
        tools=[CANCEL, BOOK] if choice == "required" else [BOOK],
        tool_choice=tool_choice,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert len(calls) == 1 and reply.choices[0].finish_reason == "tool_calls"
    function = calls[0].function
    if choice == "named" or function.name == "book_room":
        assert function.name == "book_room"
        Booking.model_validate_json(function.arguments)
    else:
        assert function.name == "cancel" and json.loads(function.arguments)["room"] in ("single", "double")


def test_only_the_nested_tool_can_be_required(client: openai.OpenAI) -> None:
    """With one tool the "required" call must be that tool, so its nested arguments are checked every run."""
    reply = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=80,
        tools=[BOOK],
        tool_choice="required",
    )
    function = reply.choices[0].message.tool_calls[0].function
    assert function.name == "book_room"
    booking = Booking.model_validate_json(function.arguments)
    assert booking.guest.name in ("Ann", "Bob")


def test_unusable_tool_parameters_are_a_400_naming_tools(client: openai.OpenAI) -> None:
    broken = tool("broken", {"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}})
    for tool_choice in ("required", {"type": "function", "function": {"name": "broken"}}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="tiny",
                messages=MSG,
                max_tokens=5,
                tools=[CANCEL, broken],
                tool_choice=tool_choice,
            )
        error = caught.value.body
        assert isinstance(error, dict) and error["param"] == "tools[1].function.parameters", error
        assert "broken" in error["message"]


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_forced_call_cut_short_by_max_tokens_is_no_call(client: openai.OpenAI, choice: str) -> None:
    """A client's ``json.loads(call.function.arguments)`` must never see half an object: cut short, the text
    generated so far is the content, with finish_reason "length" and no tool_calls."""
    tool_choice: Any = "required" if choice == "required" else {"type": "function", "function": {"name": "book_room"}}
    reply = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=3,
        tools=[BOOK],
        tool_choice=tool_choice,
    )
    choice_ = reply.choices[0]
    assert choice_.finish_reason == "length"
    assert choice_.message.tool_calls is None
    assert choice_.message.content and choice_.message.content.startswith("{")


def _stream(client: openai.OpenAI, **kwargs: Any) -> tuple[list[Any], str | None]:
    """The tool-call pieces of a streamed answer, in order, and its finish reason."""
    pieces: list[Any] = []
    finish = None
    for chunk in client.chat.completions.create(model="tiny", messages=MSG, stream=True, **kwargs):
        for choice in chunk.choices:
            pieces += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    return pieces, finish


@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_call_arguments_stream_as_they_are_generated(client: openai.OpenAI, choice: str) -> None:
    """As OpenAI streams a call: a first piece with id, type, name and arguments "", then argument fragments at
    the same index, which add up to the arguments; instructor's create_partial needs more than one fragment."""
    tool_choice: Any = "required" if choice == "required" else {"type": "function", "function": {"name": "book_room"}}
    pieces, finish = _stream(client, max_tokens=80, tools=[BOOK], tool_choice=tool_choice)
    first, fragments = pieces[0], pieces[1:]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", "book_room", "")
    assert first.id and first.id.startswith("call_")
    assert len(fragments) > 1, pieces
    assert all(p.index == 0 and p.id is None and p.function.name is None for p in fragments)
    arguments = "".join(p.function.arguments for p in fragments)
    Booking.model_validate_json(arguments)
    assert finish == "tool_calls"


def test_the_stream_helper_assembles_the_streamed_call(client: openai.OpenAI) -> None:
    """openai's own accumulator (``chat.completions.stream``) sees argument deltas and ends with the whole call,
    the same call as the non-streaming answer gives for the same greedy output."""
    kwargs: Any = {"model": "tiny", "messages": MSG, "max_tokens": 80, "tools": [BOOK], "tool_choice": "required",
                   "temperature": 0}  # fmt: skip
    deltas = []
    with client.chat.completions.stream(**kwargs) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                deltas.append(event.arguments_delta)
        streamed = stream.get_final_completion().choices[0].message.tool_calls[0].function  # type: ignore[index]
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0].function
    assert len(deltas) > 1 and "".join(deltas) == streamed.arguments
    assert (streamed.name, streamed.arguments) == (whole.name, whole.arguments)
    Booking.model_validate_json(streamed.arguments)


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_streamed_forced_call_cut_short_ends_with_length(client: openai.OpenAI, choice: str) -> None:
    """Fragments already sent cannot be taken back (OpenAI and vLLM stream them too); the stream ends with
    finish_reason "length", never "tool_calls", so a client knows the arguments are incomplete."""
    tool_choice: Any = "required" if choice == "required" else {"type": "function", "function": {"name": "book_room"}}
    pieces, finish = _stream(client, max_tokens=3, tools=[BOOK], tool_choice=tool_choice)
    assert finish == "length"
    assert all(p.function.arguments is not None for p in pieces)


def test_an_agent_required_to_call_a_tool_with_nested_parameters(stack: Stack) -> None:
    """openai-agents, unchanged, over chat completions with tool_choice "required": its function tool's nested
    pydantic parameter is a local $ref into $defs (as instructor and pydantic-ai send too); such a call was a 400
    "Pointer '/$defs/Guest' does not exist" with param response_format."""
    import agents  # the openai-agents package (test extra)

    agents.set_tracing_disabled(True)  # no trace export to OpenAI's servers
    booked: list[Guest] = []

    @agents.function_tool
    def book_room(guest: Guest, room: Literal["single", "double"]) -> str:
        """Book a room for a guest."""
        booked.append(guest)
        return f"booked a {room} room for {guest.name}"

    assert book_room.params_json_schema["properties"]["guest"] == {"$ref": "#/$defs/Guest"}
    client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)
    agent = agents.Agent(
        name="booking",
        instructions="Book the room.",
        tools=[book_room],
        model=agents.OpenAIChatCompletionsModel(model="tiny", openai_client=client),
        # the tiny model is random: the call is forced, and its output is the agent's answer
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=80, temperature=0),
        tool_use_behavior="stop_on_first_tool",
    )
    result = asyncio.run(agents.Runner.run(agent, "Book a room for Ann.", max_turns=2))
    assert len(booked) == 1 and booked[0].name in ("Ann", "Bob")
    assert [item.type for item in result.new_items] == ["tool_call_item", "tool_call_output_item"]
    assert str(result.final_output).startswith("booked a ")


def test_a_pydantic_ai_agent_with_a_nested_output_model(stack: Stack) -> None:
    """pydantic-ai, unchanged, on its OpenAI chat model: a pydantic output_type becomes an output tool it forces
    with tool_choice "required", and a nested model puts a local $ref into $defs in that tool's parameters (a 400
    before "required" resolved them)."""
    from pydantic_ai import Agent  # the pydantic-ai-slim package (test extra)
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = OpenAIChatModel("tiny", provider=OpenAIProvider(openai_client=client))
    # the tiny model is random: the grammar of the forced call is what makes its output a valid Booking
    agent = Agent(model, output_type=Booking, instructions="Book the room.", retries=0)
    result = agent.run_sync("Book a room for Ann.", model_settings={"max_tokens": 80, "temperature": 0})
    assert isinstance(result.output, Booking) and result.output.guest.name in ("Ann", "Bob")
    Booking.model_validate(result.output.model_dump())
