"""Resumable streams: every SSE event of a streamed chat completion, or completion of one prompt, has an id, and the
stream's owner can get the rest of it after any id, with no duplicate and no gap; nobody else gets anything of it."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.openai_error import openai_error
from tests.sse import SseEvent, parse_sse

KEYS = ["key-of-alice", "key-of-bob"]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]) -> str:
    keyed_settings = settings.model_copy(update={"api_keys": KEYS})
    start_worker(settings_=keyed_settings)
    api = start_api(keyed_settings)
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models", headers=_auth(KEYS[0])).json()["data"], 30)
    return api.base_url


def _stream(base_url: str, key: str, **extra: object) -> list[SseEvent]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "stream": True}
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json={**body, **extra}, headers=_auth(key), timeout=30
    ) as r:
        assert r.status_code == 200
        return parse_sse(r.iter_lines())


def assert_openai_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    openai_error(response.json())


def _resume(
    base_url: str, completion_id: str, key: str, last: str | None, endpoint: str = "chat/completions"
) -> httpx.Response:
    headers = _auth(key) | ({"Last-Event-ID": last} if last is not None else {})
    return httpx.get(f"{base_url}/v1/{endpoint}/{completion_id}/stream", headers=headers, timeout=30)


def _complete(base_url: str, key: str, **extra: object) -> list[SseEvent]:
    body = {"model": "tiny", "prompt": "Once upon", "max_tokens": 10, "stream": True, "temperature": 0.8}
    url = f"{base_url}/v1/completions"
    with httpx.stream("POST", url, json={**body, **extra}, headers=_auth(key), timeout=30) as r:
        assert r.status_code == 200
        return parse_sse(r.iter_lines())


def test_every_event_has_an_id_and_a_resume_gets_exactly_the_rest(keyed: str) -> None:
    events = _stream(keyed, KEYS[0], stream_options={"include_usage": True})
    ids = [e.id for e in events]
    assert None not in ids and len(set(ids)) == len(ids)
    assert events[-1].data == "[DONE]"
    completion_id = json.loads(events[0].data)["id"]
    for cut in (0, 1, len(events) // 2, len(events) - 2):
        r = _resume(keyed, completion_id, KEYS[0], events[cut].id)
        assert r.status_code == 200, r.text
        assert parse_sse(r.text.splitlines()) == events[cut + 1 :], f"resumed after event {cut}"
    whole = _resume(keyed, completion_id, KEYS[0], None)
    assert parse_sse(whole.text.splitlines()) == events  # no id: the whole stream again


def test_only_the_key_that_created_a_stream_can_resume_it(keyed: str) -> None:
    events = _stream(keyed, KEYS[0])
    completion_id = json.loads(events[0].data)["id"]
    last = events[1].id
    foreign = _resume(keyed, completion_id, KEYS[1], last)  # a valid key, but not the owner's
    assert_openai_error(foreign, 404)
    assert "content" not in foreign.text
    wrong = _resume(keyed, completion_id, "not-a-key", last)
    assert wrong.status_code == 401
    assert_openai_error(_resume(keyed, "chatcmpl-" + "0" * 32, KEYS[0], last), 404)  # unknown
    assert_openai_error(_resume(keyed, "../../etc", KEYS[0], last), 404)
    assert_openai_error(_resume(keyed, completion_id, KEYS[0], "garbage"), 400)


@pytest.mark.parametrize(
    "options",
    [
        {"n": 2, "seed": 7, "stream_options": {"include_usage": True}},  # two choices of one prompt: one job
        {"echo": True, "logprobs": 2},  # the echoed prompt and the logprobs' text offsets come back the same
        {"prompt": [[5, 6, 7]], "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ],
)
def test_a_completion_of_one_prompt_resumes_after_any_event_with_exactly_the_rest(
    keyed: str, options: dict[str, object]
) -> None:
    events = _complete(keyed, KEYS[0], **options)
    ids = [e.id for e in events]
    assert None not in ids and len(set(ids)) == len(ids)
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    completion_id = chunks[0]["id"]
    assert completion_id.startswith("cmpl-")
    if options.get("n") == 2:
        assert {c["index"] for chunk in chunks for c in chunk["choices"]} == {0, 1}
    if options.get("echo"):
        assert chunks[0]["choices"][0]["text"] == "Once upon"
    for cut in (0, 1, len(events) // 2, len(events) - 2):
        r = _resume(keyed, completion_id, KEYS[0], events[cut].id, "completions")
        assert r.status_code == 200, r.text
        assert parse_sse(r.text.splitlines()) == events[cut + 1 :], f"resumed after event {cut}"
    whole = httpx.get(f"{keyed}/v1/completions/{completion_id}/stream", headers=_auth(KEYS[0]), timeout=30)
    assert parse_sse(whole.text.splitlines()) == events  # no id: the whole stream again
    by_query = httpx.get(
        f"{keyed}/v1/completions/{completion_id}/stream",
        params={"last_event_id": events[1].id},
        headers=_auth(KEYS[0]),
        timeout=30,
    )
    assert parse_sse(by_query.text.splitlines()) == events[2:]


def test_a_completion_stream_is_resumed_by_its_owner_alone_and_on_its_own_endpoint(keyed: str) -> None:
    events = _complete(keyed, KEYS[0])
    completion_id = json.loads(events[0].data)["id"]
    last = events[1].id
    foreign = _resume(keyed, completion_id, KEYS[1], last, "completions")
    assert_openai_error(foreign, 404)
    assert "text" not in foreign.text
    assert _resume(keyed, completion_id, "not-a-key", last, "completions").status_code == 401
    assert_openai_error(_resume(keyed, "cmpl-" + "0" * 32, KEYS[0], last, "completions"), 404)  # unknown
    assert_openai_error(_resume(keyed, completion_id, KEYS[0], "garbage", "completions"), 400)
    # the same job seen through the other endpoint's id is not a stream of that endpoint
    job_hex = completion_id.removeprefix("cmpl-")
    assert_openai_error(_resume(keyed, "chatcmpl-" + job_hex, KEYS[0], last), 404)
    chat_id = json.loads(_stream(keyed, KEYS[0])[0].data)["id"]
    assert_openai_error(_resume(keyed, "cmpl-" + chat_id.removeprefix("chatcmpl-"), KEYS[0], last, "completions"), 404)


def test_a_completion_of_several_prompts_is_refused_with_the_reason(keyed: str) -> None:
    events = _complete(keyed, KEYS[0], prompt=["Once upon", "A time"])
    completion_id = json.loads(events[0].data)["id"]
    refused = _resume(keyed, completion_id, KEYS[0], events[1].id, "completions")
    assert_openai_error(refused, 400)
    assert "2 prompts" in refused.json()["error"]["message"]
    assert_openai_error(_resume(keyed, completion_id, KEYS[1], events[1].id, "completions"), 404)  # a stranger
