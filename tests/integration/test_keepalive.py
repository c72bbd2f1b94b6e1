"""Keep-alives on SSE streams are bytes on the wire that no client takes for an event: the official clients'
decoders (openai-python 3.x, anthropic's) turn a blank line after an event with an ``id:`` into an empty event
and fail on it, so a keep-alive is a comment line alone."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx
import openai

from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, wait_for


def test_official_clients_read_streams_full_of_keepalives(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    start_worker()
    # a keep-alive every few milliseconds: between nearly every two events of these streams
    api = start_api(settings.model_copy(update={"sse_ping_interval": 0.002}))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    raw = httpx.post(
        f"{api.base_url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "stream": True},
        timeout=60,
    ).text
    assert ": ping" in raw  # the keep-alives were there

    client = openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=200, stream=True, stop=["never"]
    )
    assert sum(1 for c in chat if c.choices and c.choices[0].delta.content) > 1
    text = client.completions.create(model="tiny", prompt="Hi", max_tokens=200, stream=True, stop=["never"])
    assert sum(1 for _ in text) > 1
    with client.responses.stream(model="tiny", input="Hi", max_output_tokens=200) as events:
        kinds = [event.type for event in events]
    assert kinds.count("response.output_text.delta") > 1 and kinds[-1] in ("response.completed", "response.incomplete")

    claude = anthropic.Anthropic(base_url=api.base_url, api_key="unused", max_retries=0)
    with claude.messages.stream(model="tiny", max_tokens=200, messages=[{"role": "user", "content": "Hi"}]) as stream:
        assert stream.get_final_message().usage.output_tokens > 1
