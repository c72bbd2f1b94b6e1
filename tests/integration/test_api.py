"""The OpenAI API end to end: official openai client -> API -> Redis -> tiny-model worker -> pub/sub -> SSE."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from broker.connection import sync_client
from broker.consumer import JobConsumer
from broker.keys import Keys
from tests.conftest import Stack, wait_for
from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0, timeout=60)


def test_models_lists_the_live_model(stack: Stack) -> None:
    assert [m.id for m in client(stack).models.list()] == ["tiny"]


def test_chat_non_stream_has_usage_and_length_finish(stack: Stack) -> None:
    r = client(stack).chat.completions.create(model="tiny", messages=PROMPT, max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert r.usage is not None
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-")


def test_stream_joined_equals_non_stream_at_temperature_zero(stack: Stack) -> None:
    c = client(stack)
    whole = c.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24, temperature=0)
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=PROMPT,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({ch.id for ch in chunks}) == 1
    assert all(ch.model == "tiny" and ch.object == "chat.completion.chunk" and ch.created for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24


def test_raw_stream_ends_with_done_marker(stack: Stack) -> None:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        json.loads(line.removeprefix("data:").strip())


def test_completions_string_and_list_prompts(stack: Stack) -> None:
    c = client(stack)
    one = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert one.object == "text_completion" and len(one.choices) == 1
    assert one.choices[0].finish_reason == "length"
    many = c.completions.create(model="tiny", prompt=["Once upon a time", "Redis streams"], max_tokens=6, temperature=0)
    assert [ch.index for ch in many.choices] == [0, 1]
    assert many.choices[0].text == one.choices[0].text  # greedy: same prompt, same text
    assert many.usage is not None and many.usage.completion_tokens == 12
    ids = c.completions.create(model="tiny", prompt=[5, 6, 7, 8], max_tokens=3, temperature=0)
    assert ids.usage is not None and ids.usage.prompt_tokens == 4


def test_completions_stream(stack: Stack) -> None:
    c = client(stack)
    whole = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
    chunks = list(
        c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, stream=True, temperature=0)
    )
    assert len({ch.id for ch in chunks}) == 1
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices[0].finish_reason] == ["length"]
    assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text  # the same answer, in pieces


def test_stop_string_cuts_text_and_reports_stop(stack: Stack) -> None:
    c = client(stack)
    free = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=30, temperature=0)
    text = free.choices[0].text
    stop = text[8:11]
    assert len(stop) == 3 and stop.strip(), f"need a visible stop string from {text!r}"
    cut = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    streamed = c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed) == text[: text.index(stop)]


def test_sampling_parameters_are_accepted(stack: Stack) -> None:
    """Accepted and honoured: a parameter the worker ignored would leave the draws below as they are."""
    c = client(stack)
    r = c.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=5, temperature=0.8, top_p=0.9, seed=7, extra_body={"top_k": 20}
    )
    assert r.usage is not None and r.usage.completion_tokens == 5

    def ask(**params: Any) -> str | None:
        answer = c.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=8, **params)
        return answer.choices[0].message.content

    greedy = ask(temperature=0)
    # top_k 1 and a tiny top_p leave only the likeliest token: the greedy answer, however hot the temperature
    assert ask(temperature=1.5, seed=1, extra_body={"top_k": 1}) == greedy
    assert ask(temperature=1.5, seed=2, top_p=1e-6) == greedy
    # the seed decides a hot draw (the tiny random model's distribution is nearly flat: draws differ)
    draws = [ask(temperature=1.5, seed=s) for s in (11, 12, 13, 11)]
    assert draws[0] == draws[3]
    assert len(set(draws[:3])) > 1 and set(draws[:3]) != {greedy}


def test_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(stack).chat.completions.create(model="nope", messages=PROMPT)
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_known_model_without_live_worker_is_503(stack: Stack, settings) -> None:
    # a model that once had a worker (its stream exists) but has none alive now
    JobConsumer(sync_client(settings.redis_url), Keys(settings.key_prefix), ["gone"], "x").ensure_groups()
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "gone", "messages": PROMPT})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_worker_available"


def test_context_length_exceeded_is_400_before_any_token(stack: Stack) -> None:
    limit = stack.worker.worker.engine.max_model_len
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": limit, "stream": True}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_health(stack: Stack) -> None:
    r = httpx.get(f"{stack.base_url}/health")
    assert r.status_code == 200 and r.json()["broker"] == "up"


def test_worker_with_expired_heartbeat_leaves_models(stack: Stack, settings) -> None:
    from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus

    client_ = sync_client(settings.redis_url)
    ghost = WorkerRegistration(client_, Keys(settings.key_prefix), WorkerCard(id="ghost", models=["ghostly"]), 0.5)
    ghost.heartbeat(WorkerStatus())
    models = lambda: {m["id"] for m in httpx.get(f"{stack.base_url}/v1/models").json()["data"]}  # noqa: E731
    assert models() == {"tiny", "ghostly"}
    wait_for(lambda: models() == {"tiny"}, timeout=5)  # nothing refreshes the ghost's heartbeat
    assert client_.hget(Keys(settings.key_prefix).workers, "ghost") is None  # and readers pruned its card


def test_seed_makes_sampling_reproducible_whatever_shares_the_batch(stack: Stack) -> None:
    import concurrent.futures

    c = client(stack)

    def sample(seed: int) -> str:
        r = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=1.0, seed=seed)
        return r.choices[0].text

    alone = sample(42)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        noise = [
            pool.submit(lambda: c.completions.create(model="tiny", prompt="Redis", max_tokens=30)) for _ in range(3)
        ]
        crowded = pool.submit(sample, 42).result()
        for f in noise:
            f.result()
    assert crowded == alone
    assert sample(43) != alone


def test_default_kv_cache_sizing_serves_a_small_model(start_worker, start_api) -> None:
    """Without --num-blocks the cache comes from --kv-cache-gib; for a tiny model that must not explode into
    gigabytes of attention mask (it did: 'Memory footprint ... is more than available memory')."""
    worker = start_worker(num_blocks=None, page_size=16)
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    assert worker.worker.engine.max_model_len == 4096  # the model's context, not cut by the cache
    r = httpx.post(
        f"{api.base_url}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


def test_stream_interval_packs_tokens_into_fewer_chunks_with_the_same_text(start_worker, start_api) -> None:
    """--stream-interval 4: the first token goes at once, then chunks of 4 tokens; the text and usage are those of
    a non-streaming answer."""
    start_worker(stream_interval=4)
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    c = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    whole = c.completions.create(model="tiny", prompt="Hello there", max_tokens=17, temperature=0)
    chunks = list(
        c.completions.create(
            model="tiny",
            prompt="Hello there",
            max_tokens=17,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].text]
    assert "".join(texts) == whole.choices[0].text
    assert len(texts) <= 1 + 16 // 4 + 1  # the first token, full chunks of 4, and what the end releases
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 17
