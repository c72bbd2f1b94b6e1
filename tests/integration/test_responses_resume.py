"""A streamed background response streamed again, from another API replica: ``GET /v1/responses/{id}?stream=true``
with ``starting_after`` gives exactly the events after that sequence number (the same events, as the first stream
had them), then the rest live; without it the whole stream again. Other responses are refused by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.openai_error import openai_error

QUESTION = "Say something about the sea."


def _key(event: Any) -> tuple[Any, ...]:
    return (event.type, event.sequence_number, getattr(event, "delta", None), getattr(event, "text", None))


@pytest.fixture
def replicas(start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]) -> list[openai.OpenAI]:
    start_worker()
    clients = []
    for api in (start_api(), start_api()):
        wait_for(lambda api=api: httpx.get(f"{api.base_url}/v1/models").json()["data"])  # type: ignore[misc]
        clients.append(openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="unused", max_retries=0, timeout=60))
    return clients


def test_a_background_stream_resumes_on_another_replica_after_a_sequence_number(
    replicas: list[openai.OpenAI],
) -> None:
    first, second = replicas
    stream = first.responses.create(
        model="tiny", input=QUESTION, max_output_tokens=48, temperature=0, background=True, stream=True
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) >= 8:
            break
    stream.close()  # the client went away: a background response goes on
    response_id = seen[0].response.id
    last = seen[-1].sequence_number

    rest = list(second.responses.retrieve(response_id, stream=True, starting_after=last))
    assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))  # no gap, no repeat
    assert rest[-1].type == "response.incomplete"  # cut by max_output_tokens, as the first stream would have been
    whole = list(second.responses.retrieve(response_id, stream=True))
    assert [_key(e) for e in whole] == [_key(e) for e in seen + rest]  # the same events as the first stream's
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    final = wait_for(lambda: (r := first.responses.retrieve(response_id)).status == "incomplete" and r)
    assert final.output_text == text


def test_only_streamed_background_responses_stream_again(replicas: list[openai.OpenAI]) -> None:
    client = replicas[0]
    plain = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=4)
    background = client.responses.create(model="tiny", input=QUESTION, max_output_tokens=4, background=True)
    base = str(client.base_url).rstrip("/")
    for response_id in (plain.id, background.id):
        r = httpx.get(f"{base}/responses/{response_id}", params={"stream": "true"})
        assert r.status_code == 400 and openai_error(r.json()).param == "stream", r.text
    r = httpx.get(f"{base}/responses/{plain.id}", params={"starting_after": 2})
    assert r.status_code == 400 and openai_error(r.json()).param == "starting_after"
