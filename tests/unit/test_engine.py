"""The batching engine against transformers' reference paths: its decode attention against ``sdpa`` with the
manager's dense mask, and its greedy output (prompts of different lengths batched together; prompts that reuse a
cached beginning) against ``model.generate`` one prompt at a time."""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from workers.engine import GenerationRequest
from workers.engines.transformers import ContinuousBatchingEngine, EngineConfig
from workers.engines.transformers.attention import decode_attention


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def generate(model: Any, tokenizer: Any, text: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return list(out[0, ids.shape[1] :].tolist())


def collect(engine: ContinuousBatchingEngine, expected: int) -> dict[str, list[int]]:
    """Every sequence's tokens, once ``expected`` sequences have finished."""
    got: dict[str, list[int]] = {}
    finished = 0
    deadline = time.monotonic() + 60
    while finished < expected and time.monotonic() < deadline:
        for update in engine.poll(timeout=0.05):
            got.setdefault(update.seq_id, []).extend(update.token_ids)
            finished += update.finished
    assert finished == expected, f"only {finished} of {expected} sequences finished"
    return got


def test_decode_attention_matches_sdpa_with_the_dense_mask() -> None:
    torch.manual_seed(0)
    heads, kv_heads, head_dim, lengths = 4, 2, 8, [5, 9, 1, 3]
    total = sum(lengths)
    query = torch.randn(1, heads, len(lengths), head_dim)
    key, value = torch.randn(1, kv_heads, total, head_dim), torch.randn(1, kv_heads, total, head_dim)
    cu_seq_lens_k = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    # the manager's mask: each sequence's token sees all of its own keys and none of the others'
    mask = torch.full((1, 1, len(lengths), total), torch.finfo(torch.float32).min)
    for row, (start, end) in enumerate(zip(cu_seq_lens_k[:-1].tolist(), cu_seq_lens_k[1:].tolist(), strict=True)):
        mask[0, 0, row, start:end] = 0.0
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    kwargs = {"cu_seq_lens_k": cu_seq_lens_k, "max_length_q": 1, "max_length_k": max(lengths)}
    ours, _ = decode_attention(module, query, key, value, mask, scaling=0.3, **kwargs)
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert ours.shape == reference.shape == (1, len(lengths), heads, head_dim)
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_batched_greedy_output_matches_generate(tiny_model_dir: Path, attention: str) -> None:
    """With ``eager`` (the manager's paged eager attention) the decode overrides, installed process-wide by any CPU
    engine, must stay out of the way."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    prompts = ["a", "the queue holds jobs", "workers read streams and publish tokens to the API", "x y"]
    engine = ContinuousBatchingEngine(model, tokenizer, EngineConfig(slots=8, num_blocks=64))
    try:
        for i, text in enumerate(prompts):
            engine.add(GenerationRequest(f"s{i}", tokenizer.encode(text), max_new_tokens=12, temperature=0.0))
        got = collect(engine, len(prompts))
    finally:
        engine.close()
    assert [got[f"s{i}"] for i in range(len(prompts))] == [generate(model, tokenizer, p, 12) for p in prompts]


def test_prompts_sharing_a_cached_beginning_answer_as_alone(tiny: tuple[Any, Any]) -> None:
    """Prefix caching: a prompt whose beginning an earlier request left in the cache reuses those blocks (seen at
    the cache) and still answers token for token as ``generate`` does."""
    model, tokenizer = tiny
    system = "You are a careful assistant who answers briefly. " * 3
    prompts = [system + "first question", system + "second one", system + "and a third"]
    assert len(tokenizer.encode(system)) >= 2 * 16  # two whole blocks of the default page size in common
    engine = ContinuousBatchingEngine(model, tokenizer, EngineConfig(slots=4, num_blocks=64))
    matched: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while getattr(engine._manager, "batch_processor", None) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the manager's thread creates it as it starts
        cache = engine._manager.batch_processor.cache
        search = cache.search_prefix_match

        def counting(request_id: str, ids: list[int]) -> int:
            matched.append(search(request_id, ids))
            return matched[-1]

        cache.search_prefix_match = counting
        for i, text in enumerate(prompts):  # one after the other, so each finds the blocks of those before
            engine.add(GenerationRequest(f"p{i}", tokenizer.encode(text), max_new_tokens=10, temperature=0.0))
            assert collect(engine, 1)[f"p{i}"] == generate(model, tokenizer, text, 10)
    finally:
        engine.close()
    assert matched[0] == 0 and min(matched[1:]) >= 32  # the later prompts were not prefilled from their start


def test_the_cpu_decode_fast_path_runs_and_says_so(tiny: tuple[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    """On the CPU with sdpa, in the tested transformers range, decode steps go through the padded attention
    (workers/engines/transformers/attention.py), and the engine's status says it is on."""
    import workers.engines.transformers as backend
    from workers.engines.transformers import attention

    model, tokenizer = tiny
    low, high = backend.TESTED_TRANSFORMERS
    installed = importlib.metadata.version("transformers")
    if not low <= backend._release(installed) < high:
        pytest.skip(f"transformers {installed}: the fast path is off outside {low}-{high}")
    on, why = backend.fast_path_status(model)
    assert on, why
    before = attention.fast_path_calls
    engine = ContinuousBatchingEngine(model, tokenizer, EngineConfig(slots=4, num_blocks=64))
    try:
        assert engine.fast_path
        for i in range(3):
            engine.add(GenerationRequest(f"f{i}", tokenizer.encode("the queue"), max_new_tokens=8, temperature=0.0))
        collect(engine, 3)
    finally:
        engine.close()
    assert attention.fast_path_calls > before


def test_the_fast_path_is_off_outside_the_tested_transformers_range(tiny: tuple[Any, Any]) -> None:
    import workers.engines.transformers as backend

    on, why = backend.fast_path_status(tiny[0], installed="9.0.0")
    assert not on
    assert "9.0.0" in why and "outside the tested range" in why
    assert not backend.fast_path_status(tiny[0], installed="5.19.0")[0]
    assert backend.fast_path_status(tiny[0], installed="5.24.0")[0]


def test_a_sequence_added_again_right_after_its_cancel_answers_as_alone(tiny: tuple[Any, Any]) -> None:
    """A worker that stopped a job (fenced, or its client left) may take the same job back at once and add its
    sequence under the same seq id while the manager still holds the first request: the second must answer as
    if alone, with no engine failure, and none of the first's late outputs may be taken for the second's."""
    model, tokenizer = tiny
    prompt = tokenizer.encode("workers read streams and publish tokens")
    expected = generate(model, tokenizer, "workers read streams and publish tokens", 8)
    engine = ContinuousBatchingEngine(model, tokenizer, EngineConfig(slots=8, num_blocks=64))
    errors: list[str] = []
    try:
        for trial in range(12):
            engine.add(GenerationRequest("job/0", prompt, max_new_tokens=40, temperature=0.0))
            engine.add(GenerationRequest(f"other/{trial}", prompt, max_new_tokens=4, temperature=0.0))
            others_done = 0
            for _ in range(trial % 4):  # cancelled at different points: queued, prefilling, decoding
                for update in engine.poll(timeout=0.05):
                    errors += [update.error] if update.error else []
                    others_done += update.finished and update.seq_id != "job/0"
            engine.cancel("job/0")
            engine.add(GenerationRequest("job/0", prompt, max_new_tokens=8, temperature=0.0))
            again: list[int] = []
            finished: set[str] = set()
            deadline = time.monotonic() + 60
            while len(finished) + others_done < 2 and time.monotonic() < deadline:
                for update in engine.poll(timeout=0.05):
                    errors += [update.error] if update.error else []
                    if update.seq_id == "job/0":
                        again += update.token_ids
                    if update.finished:
                        finished.add(update.seq_id)
            assert "job/0" in finished, f"trial {trial}: the sequence added again never finished"
            assert again == expected, f"trial {trial}"
    finally:
        engine.close()
    assert errors == []
