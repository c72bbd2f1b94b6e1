"""OpenAI's Responses API through the official ``openai`` client, unchanged, against the real stack (tiny model):
stored responses (retrieve, delete, input items, previous_response_id, per-key ownership, their TTL) and background
runs with poll and cancel."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import ApiServer, Stack, wait_for
from tests.responses_support import QUESTION
from tests.responses_support import client as client  # the fixture (re-exported, so not an unused import)


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
