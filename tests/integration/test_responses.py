"""OpenAI's Responses API through the official ``openai`` client (and the ``openai-agents`` SDK), unchanged, against
the real stack (tiny model): answers streamed and not, stored responses (retrieve, delete, input items,
previous_response_id, per-key ownership), function tools, structured output, background runs with poll and
cancel, and bad input answered in OpenAI's error shape without reaching a worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Literal

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import ApiServer, Stack, wait_for
from tests.hostile import LONE, deep_schema, json_bytes
from tests.openai_error import openai_error

QUESTION = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


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


def test_input_items_retrieve_and_delete(client: openai.OpenAI) -> None:
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    response = client.responses.create(model="tiny", input=items, max_output_tokens=4)
    listed = client.responses.input_items.list(response.id)
    data = listed.data
    assert [item.role for item in data] == ["user", "developer"]  # newest first
    assert _first_text(data[0]) == QUESTION
    ascending = client.responses.input_items.list(response.id, order="asc", limit=1)
    assert [i.id for i in ascending.data] == [data[1].id] and ascending.has_more
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def _first_text(item: Any) -> str:
    """The text of an input item's first content part (the client types items as a union of every item kind)."""
    return str(item.content[0].text)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=2, store=False)
    assert response.model_dump()["store"] is False  # not among the client's typed fields
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="And?", max_output_tokens=2, previous_response_id=response.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=8, temperature=0)
    follow = client.responses.create(
        model="tiny", input="And of Norway?", max_output_tokens=4, temperature=0, previous_response_id=first.id
    )
    assert follow.previous_response_id == first.id
    # the same conversation sent whole as items is the same prompt, answered alike
    whole = client.responses.create(
        model="tiny",
        input=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And of Norway?"},
        ],
        max_output_tokens=4,
        temperature=0,
    )
    assert follow.usage.input_tokens == whole.usage.input_tokens
    assert follow.output_text == whole.output_text
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # input_items lists the request's own input only
    assert [_first_text(i) for i in client.responses.input_items.list(follow.id).data] == ["And of Norway?"]


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


def _cancelled_jobs(settings: Settings) -> int:
    return int(sync_client(str(settings.redis_url)).hget(Keys(settings.key_prefix).stats("tiny"), "cancelled") or 0)


def _settled(client: openai.OpenAI, response_id: str) -> Any:
    return wait_for(lambda: (r := client.responses.retrieve(response_id)).status not in ("queued", "in_progress") and r)


def test_background_poll_and_cancel(client: openai.OpenAI) -> None:
    queued = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=8, background=True)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    done = _settled(client, queued.id)
    assert done.status == "incomplete" and done.output_text and done.usage.output_tokens == 8
    # a long one (greedy: the tiny model runs on to the limit), cancelled: it stays cancelled
    long = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=4000, temperature=0, background=True)
    assert client.responses.cancel(long.id).status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"
    # what is done cannot be cancelled any more; a response not made in the background cannot be cancelled at all
    assert client.responses.cancel(queued.id).status == "incomplete"
    plain = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_cancel_stops_a_running_background_job(stack: Stack, settings: Settings, client: openai.OpenAI) -> None:
    body = {"model": "tiny", "input": QUESTION, "max_output_tokens": 4000, "temperature": 0}
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/responses", json={**body, "stream": True, "background": True}, timeout=30
    ) as r:
        events = (json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:"))
        response_id = next(events)["response"]["id"]
        next(e for e in events if e["type"] == "response.output_text.delta")  # it runs on the worker now
        assert client.responses.cancel(response_id).status == "cancelled"
        rest = list(events)  # the stream ends
    assert all(e["type"] == "response.output_text.delta" for e in rest)
    Response.model_validate(httpx.get(f"{stack.base_url}/v1/responses/{response_id}").json())
    wait_for(lambda: _cancelled_jobs(settings) == 1)  # the worker stopped the job
    assert client.responses.retrieve(response_id).status == "cancelled"


def test_a_cancel_on_another_replica_stops_the_job(
    settings: Settings, start_worker: Callable[..., Any], start_api: Callable[..., ApiServer]
) -> None:
    start_worker()
    running, other = start_api(), start_api()  # two API replicas on one Redis
    wait_for(lambda: httpx.get(f"{running.base_url}/v1/models").json()["data"])
    elsewhere = openai.OpenAI(base_url=f"{other.base_url}/v1", api_key="unused", max_retries=0)
    body = {"model": "tiny", "input": QUESTION, "max_output_tokens": 4000, "temperature": 0}
    with httpx.stream(
        "POST", f"{running.base_url}/v1/responses", json={**body, "stream": True, "background": True}, timeout=30
    ) as r:
        events = (json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:"))
        response_id = next(events)["response"]["id"]
        next(e for e in events if e["type"] == "response.output_text.delta")
        assert elsewhere.responses.retrieve(response_id).status == "in_progress"  # polled on the other replica
        assert elsewhere.responses.cancel(response_id).status == "cancelled"
        list(events)  # the running replica sees the cancel in its record and ends the run
    wait_for(lambda: _cancelled_jobs(settings) == 1)
    assert elsewhere.responses.retrieve(response_id).status == "cancelled"


def test_a_background_job_that_fails_fails_its_response(client: openai.OpenAI) -> None:
    # a prompt and output over the model's context: the worker refuses the job before any token
    response = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=100_000, background=True)
    failed = _settled(client, response.id)
    assert failed.status == "failed" and failed.error is not None
    Response.model_validate(httpx.get(f"{client.base_url}responses/{response.id}").json())  # strictly, too
    assert failed.error.code == "invalid_prompt" and "context" in failed.error.message


def test_a_stream_whose_client_leaves_is_cancelled(stack: Stack, settings: Settings, client: openai.OpenAI) -> None:
    body = {"model": "tiny", "input": QUESTION, "max_output_tokens": 4000, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/v1/responses", json=body, timeout=30) as r:
        lines = r.iter_lines()
        created = next(json.loads(line[5:]) for line in lines if line.startswith("data:"))
        next(line for line in lines if "response.output_text.delta" in line)
    assert created["type"] == "response.created"
    wait_for(lambda: _cancelled_jobs(settings) == 1)  # the worker stopped the job
    assert _settled(client, created["response"]["id"]).status == "cancelled"


def test_background_stream(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model="tiny", input=QUESTION, max_output_tokens=6, background=True, stream=True)
    )
    assert [e.type for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].response.status == "queued"
    assert events[-1].type == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = wait_for(lambda: (r := client.responses.retrieve(events[0].response.id)).status == "incomplete" and r)
    assert final.output_text == text


def test_stored_responses_belong_to_their_key(
    settings: Settings, start_worker: Callable[..., Any], start_api: Callable[..., ApiServer]
) -> None:
    start_worker()
    api = start_api(settings.model_copy(update={"api_keys": ["sk-one", "sk-two"]}))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models", headers={"x-api-key": "sk-one"}).json()["data"])
    one = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="sk-one", max_retries=0)
    two = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="sk-two", max_retries=0)
    response = one.responses.create(model="tiny", input=QUESTION, max_output_tokens=2)
    assert one.responses.retrieve(response.id).id == response.id
    with pytest.raises(openai.NotFoundError):
        two.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        two.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        two.responses.input_items.list(response.id)
    with pytest.raises(openai.BadRequestError):
        two.responses.create(model="tiny", input="And?", max_output_tokens=2, previous_response_id=response.id)
    assert one.responses.retrieve(response.id).id == response.id  # two's delete did nothing


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


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("no input", {}, "input"),
    ("an empty input list", {"input": []}, "input"),
    ("temperature over 2", {"input": QUESTION, "temperature": 2.5}, "temperature"),
    ("max_output_tokens 0", {"input": QUESTION, "max_output_tokens": 0}, "max_output_tokens"),
    ("an unknown parameter", {"input": QUESTION, "frobnicate": 1}, "frobnicate"),
    ("reasoning", {"input": QUESTION, "reasoning": {"effort": "high"}}, "reasoning"),
    ("a conversation", {"input": QUESTION, "conversation": "conv_1"}, "conversation"),
    ("a stored prompt", {"input": QUESTION, "prompt": {"id": "pmpt_1"}}, "prompt"),
    ("max_tool_calls", {"input": QUESTION, "max_tool_calls": 2}, "max_tool_calls"),
    ("top_logprobs", {"input": QUESTION, "top_logprobs": 2}, "top_logprobs"),
    ("include", {"input": QUESTION, "include": ["message.output_text.logprobs"]}, "include"),
    ("truncation auto", {"input": QUESTION, "truncation": "auto"}, "truncation"),
    ("a flex service tier", {"input": QUESTION, "service_tier": "flex"}, "service_tier"),
    ("a hosted tool", {"input": QUESTION, "tools": [{"type": "web_search"}]}, "web_search"),
    ("tool_choice without tools", {"input": QUESTION, "tool_choice": "required"}, "tools"),
    (
        "tool_choice naming another tool",
        {"input": QUESTION, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}},
        "other",
    ),
    (
        "an image part",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input_image",
    ),
    ("a reasoning item without its summary", {"input": [{"type": "reasoning", "id": "rs_1"}]}, "summary"),
    ("an item reference", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
    (
        "a function call without call_id",
        {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        "call_id",
    ),
    (
        "output_text from the user",
        {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
        "output_text",
    ),
    (
        "a json_schema format without schema",
        {"input": QUESTION, "text": {"format": {"type": "json_schema", "name": "x"}}},
        "schema",
    ),
    ("verbosity high", {"input": QUESTION, "text": {"verbosity": "high"}}, "verbosity"),
    ("background without store", {"input": QUESTION, "background": True, "store": False}, "store"),
    ("stream_options without stream", {"input": QUESTION, "stream_options": {"include_obfuscation": False}}, "stream"),
    ("an unknown previous response", {"input": QUESTION, "previous_response_id": "resp_nope"}, "previous_response_id"),
    (
        "a forced call and a JSON format",
        {"input": QUESTION, "tools": [WEATHER], "tool_choice": "required", "text": {"format": {"type": "json_object"}}},
        "tool_choice",
    ),
    ("a metadata value too long", {"input": QUESTION, "metadata": {"k": "x" * 513}}, "metadata"),
    ("a lone surrogate in the input", {"input": LONE}, "surrogate"),
    ("a lone surrogate in the instructions", {"input": QUESTION, "instructions": LONE}, "surrogate"),
    (
        "a tool's parameters nested 300 deep",
        {"input": QUESTION, "tools": [{"type": "function", "name": "f", "parameters": deep_schema()}]},
        "nested",
    ),
]


@pytest.mark.parametrize(("case", "body", "named"), BAD_REQUESTS, ids=[c for c, _, _ in BAD_REQUESTS])
def test_bad_input_is_an_openai_400_and_reaches_no_worker(
    stack: Stack, settings: Settings, case: str, body: dict[str, Any], named: str
) -> None:
    stream = Keys(settings.key_prefix).jobs("tiny")
    redis = sync_client(str(settings.redis_url))
    before = redis.xlen(stream)
    r = httpx.post(
        f"{stack.base_url}/v1/responses",
        content=json_bytes({"model": "tiny", "max_output_tokens": 2, **body}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = openai_error(r.json())
    assert error.type == "invalid_request_error"
    assert named in error.message or named == error.param, error
    assert redis.xlen(stream) == before
    assert not list(redis.scan_iter(match=f"{settings.key_prefix}:responses:*"))  # nothing stored either
    ok = httpx.post(f"{stack.base_url}/v1/responses", json={"model": "tiny", "input": "Hi", "max_output_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_lookups_of_unknown_responses_are_openai_404s(stack: Stack) -> None:
    for method, path in [
        ("GET", "/v1/responses/resp_nope"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("POST", "/v1/responses/resp_nope/cancel"),
        ("GET", "/v1/responses/resp_nope/input_items"),
    ]:
        r = httpx.request(method, f"{stack.base_url}{path}")
        assert r.status_code == 404, (method, path, r.text)
        assert openai_error(r.json()).code == "not_found"
    r = httpx.get(f"{stack.base_url}/v1/responses/resp_nope", params={"stream": "true", "starting_after": 3})
    assert r.status_code == 404 and openai_error(r.json()).code == "not_found"
    r = httpx.get(f"{stack.base_url}/v1/responses/resp_nope/input_items", params={"limit": 0})
    assert r.status_code == 400 and "limit" in str(openai_error(r.json()).param)


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_the_clients_not_found_error(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input=QUESTION, stream=stream)
    assert caught.value.code == "model_not_found"


def test_the_ttl_of_stored_responses_is_configurable(
    settings: Settings,
    start_worker: Callable[..., Any],
    start_api: Callable[..., ApiServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUECHAT_RESPONSES_TTL", "120")
    start_worker()
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    r = httpx.post(f"{api.base_url}/v1/responses", json={"model": "tiny", "input": "Hi", "max_output_tokens": 2})
    key = Keys(settings.key_prefix).response(r.json()["id"])
    assert 0 < sync_client(str(settings.redis_url)).ttl(key) <= 120
