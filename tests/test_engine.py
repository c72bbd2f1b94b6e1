"""The batching engine against transformers' reference paths: its decode attention against ``sdpa`` with the
manager's dense mask, and its greedy output, prompts of different lengths batched together, against
``model.generate`` one prompt at a time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from workers.attention import decode_attention
from workers.engine import ContinuousBatchingEngine, EngineConfig, GenerationRequest


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


def test_batched_greedy_output_matches_generate(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = ["a", "the queue holds jobs", "workers read streams and publish tokens to the API", "x y"]
    expected = []
    with torch.inference_mode():
        for text in prompts:
            ids = torch.tensor([tokenizer.encode(text)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
            expected.append(out[0, ids.shape[1] :].tolist())
    engine = ContinuousBatchingEngine(model, tokenizer, EngineConfig(slots=8, num_blocks=64))
    try:
        got: dict[str, list[int]] = {}
        for i, text in enumerate(prompts):
            engine.add(GenerationRequest(f"s{i}", tokenizer.encode(text), max_new_tokens=12, temperature=0.0))
            got[f"s{i}"] = []
        finished = 0
        for _ in range(2000):
            for update in engine.poll(timeout=0.05):
                got[update.seq_id] += update.token_ids
                finished += update.finished
            if finished == len(prompts):
                break
    finally:
        engine.close()
    assert [got[f"s{i}"] for i in range(len(prompts))] == expected
