"""OpenAI's Responses API through the official ``openai`` client (and the ``openai-agents`` SDK), unchanged, against
the real stack (tiny model): what it answers, streamed and not (the events in order, every object valid against
the SDK's own types), function tools and structured output."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import Stack
from tests.responses_support import QUESTION, WEATHER
from tests.responses_support import client as client  # the fixture (re-exported, so not an unused import)


def test_response_matches_the_chat_answer_and_is_stored(
    client: openai.OpenAI, stack: Stack, settings: Settings
) -> None:
    response = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=12, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == "tiny"
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "incomplete"
    assert response.output_text and response.usage is not None and response.usage.output_tokens == 12
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + 12
    # stored (store defaults to true), with a TTL
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.status == "incomplete"
    key = Keys(settings.key_prefix).response(response.id)
    assert 0 < sync_client(str(settings.redis_url)).ttl(key) <= 30 * 24 * 3600


def test_a_short_answer_completes(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="tiny", input=QUESTION, max_output_tokens=64, temperature=0, instructions="Answer.", metadata={"k": "v"}
    )
    # the tiny random model stops on its own now and then, or runs to the limit
    assert response.status in ("completed", "incomplete")
    assert response.instructions == "Answer." and response.metadata == {"k": "v"}
    if response.status == "completed":
        assert response.incomplete_details is None and response.completed_at is not None


def test_instructions_reach_the_model(client: openai.OpenAI) -> None:
    plain = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=2)
    told = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=2, instructions="Be brief.")
    assert told.usage.input_tokens > plain.usage.input_tokens


def test_stream_events_in_order_and_text_equal_to_the_answer(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=16, temperature=0)
    events = list(
        client.responses.create(model="tiny", input=QUESTION, max_output_tokens=16, temperature=0, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # cut by max_output_tokens
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    final = events[-1].response
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == text and final.usage.output_tokens == 16
    assert final.usage.input_tokens == whole.usage.input_tokens
    # the stream's response is stored too, and the SDK's stream helper sees the same answer
    assert client.responses.retrieve(final.id).output_text == text
    with client.responses.stream(model="tiny", input=QUESTION, max_output_tokens=16, temperature=0) as stream:
        helped = list(stream)
    assert "".join(e.delta for e in helped if e.type == "response.output_text.delta") == text
    assert helped[-1].type == "response.incomplete"  # (its get_final_response() wants response.completed)


@pytest.mark.parametrize("tools", [False, True])
def test_every_object_validates_against_the_sdks_own_types(stack: Stack, tools: bool) -> None:
    """The client builds its objects without validating them; here they are validated, strictly as pydantic
    does, against the installed SDK's types: the Response, every stream event, an input items page."""
    body: dict[str, Any] = {"model": "tiny", "input": QUESTION, "max_output_tokens": 120, "metadata": {"a": "b"}}
    if tools:
        body |= {"tools": [WEATHER], "tool_choice": "required"}
    answer = httpx.post(f"{stack.base_url}/v1/responses", json=body, timeout=60).json()
    Response.model_validate(answer)
    assert answer["output"][0]["type"] == ("function_call" if tools else "message")
    with httpx.stream("POST", f"{stack.base_url}/v1/responses", json={**body, "stream": True}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    events = TypeAdapter(ResponseStreamEvent)
    for line in lines:
        events.validate_json(line[5:].strip())
    Response.model_validate(httpx.get(f"{stack.base_url}/v1/responses/{answer['id']}").json())
    page = httpx.get(f"{stack.base_url}/v1/responses/{answer['id']}/input_items").json()
    items = TypeAdapter(ResponseItem)
    for item in page["data"]:
        items.validate_python(item)


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(client: openai.OpenAI, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": "tiny",
        "input": QUESTION,
        "max_output_tokens": 40,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
    }
    if stream:
        with client.responses.stream(**kwargs) as helper:  # the SDK's helper reassembles the call
            assembled = helper.get_final_response()
        assert assembled.output[0].arguments
        events = list(client.responses.create(**kwargs, stream=True))
        kinds = [e.type for e in events]
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert deltas == next(e.arguments for e in events if e.type == "response.function_call_arguments.done")
        assert [k for i, k in enumerate(kinds) if k != kinds[i - 1]] == [  # the arguments arrive as fragments
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        response = events[-1].response
    else:
        response = client.responses.create(**kwargs)
    assert response.status == "completed"
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    arguments = json.loads(call.arguments)
    assert arguments["city"] in ("Paris", "Oslo") and arguments["unit"] in ("C", "F")
    # the client runs the tool and sends its output back, continuing the stored conversation
    follow = client.responses.create(
        model="tiny",
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}],
        tools=[WEATHER],
        max_output_tokens=4,
    )
    assert follow.output and follow.usage.input_tokens > response.usage.input_tokens
    # and the same, sent whole without a stored conversation
    whole = client.responses.create(
        model="tiny",
        input=[
            {"role": "user", "content": QUESTION},
            {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"},
        ],
        tools=[WEATHER],
        max_output_tokens=4,
    )
    assert whole.usage.input_tokens == follow.usage.input_tokens


def test_json_schema_format_constrains_the_answer(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["Paris", "Oslo"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="tiny",
        input=QUESTION,
        max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text)["answer"] in ("Paris", "Oslo")
    assert response.text.format.type == "json_schema"
    as_object = client.responses.create(
        model="tiny", input=QUESTION, max_output_tokens=40, text={"format": {"type": "json_object"}}
    )
    if as_object.status == "completed":  # cut short, the JSON may be unfinished
        assert isinstance(json.loads(as_object.output_text), dict)


@pytest.mark.parametrize("streamed", [False, True])
def test_an_agent_calls_its_function_tool(stack: Stack, streamed: bool) -> None:
    import agents  # the openai-agents package (test extra)

    agents.set_tracing_disabled(True)  # no trace export to OpenAI's servers
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Oslo"]) -> str:  # an enum: the forced call is short
        """The weather in a city."""
        calls.append(city)
        return f"18 C and sunny in {city}"

    model = agents.OpenAIResponsesModel(
        model="tiny", openai_client=openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)
    )
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=model,
        # the tiny model is random: the call is forced, and its output is the agent's answer (a further turn of
        # random text would most likely run into max_tokens, which the SDK raises for)
        model_settings=agents.ModelSettings(tool_choice="get_weather", max_tokens=40),
        tool_use_behavior="stop_on_first_tool",
    )
    question = "What is the weather in Paris?"
    if streamed:  # the SDK reads the Responses stream events (run_sync asks for whole responses)

        async def run() -> Any:
            running = agents.Runner.run_streamed(agent, question, max_turns=2)
            kinds = [event.type async for event in running.stream_events()]
            assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
            return running

        result = asyncio.run(run())
    else:
        result = agents.Runner.run_sync(agent, question, max_turns=2)
    assert len(calls) == 1 and calls[0] in ("Paris", "Oslo")
    assert [item.type for item in result.new_items] == ["tool_call_item", "tool_call_output_item"]
    assert result.final_output == f"18 C and sunny in {calls[0]}"
