"""Decode-step attention for transformers' continuous batching where it runs on ``sdpa`` (the CPU).

Without flash attention the manager packs every sequence of a step into one row: the keys of all sequences side
by side, and a dense mask that lets each query see only its own sequence. A decode step then costs every query
the keys of every sequence (quadratic in the batch), plus copying the key/value heads once per query head. Here a
step in which every sequence decodes one token gathers each sequence's keys into a padded batch instead
(``batch x longest``) and lets ``scaled_dot_product_attention`` share the key/value heads (``enable_gqa``); the
result is the same (greedy output is token for token identical). Every other call (prefill, a step that mixes
prefill and decode, a model with sliding windows or attention sinks, anything outside continuous batching) goes
to transformers' own ``sdpa`` unchanged.

The registration is process-wide (transformers looks attention functions up by name), so a worker installs it once
for its CPU engine; every model in the process still gets transformers' results.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def decode_attention(
    module: Any,
    query: torch.Tensor,  # [1, heads, sequences, head_dim]: one new token per sequence
    key: torch.Tensor,  # [1, kv_heads, total keys, head_dim]: the sequences' keys side by side
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    cu_seq_lens_k = kwargs.get("cu_seq_lens_k")
    if (
        not isinstance(cu_seq_lens_k, torch.Tensor)
        or kwargs.get("max_length_q") != 1
        or query.shape[0] != 1
        or getattr(module, "sliding_window", None)
        or kwargs.get("sliding_window")
        or kwargs.get("s_aux") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    starts = cu_seq_lens_k[:-1].long()
    lengths = cu_seq_lens_k[1:].long() - starts
    sequences = lengths.numel()
    width = int(kwargs["max_length_k"])
    columns = torch.arange(width, device=key.device)
    valid = columns.unsqueeze(0) < lengths.unsqueeze(1)  # [sequences, width]
    index = torch.where(valid, starts.unsqueeze(1) + columns.unsqueeze(0), 0).reshape(-1)
    kv_heads, head_dim = key.shape[1], key.shape[3]
    padded_keys = key[0].index_select(1, index).view(kv_heads, sequences, width, head_dim).transpose(0, 1)
    padded_values = value[0].index_select(1, index).view(kv_heads, sequences, width, head_dim).transpose(0, 1)
    queries = query[0].transpose(0, 1).unsqueeze(2)  # [sequences, heads, 1, head_dim]
    out = torch.nn.functional.scaled_dot_product_attention(
        queries,
        padded_keys,
        padded_values,
        attn_mask=valid[:, None, None, :],
        scale=scaling,
        enable_gqa=queries.shape[1] != kv_heads,
    )
    # transformers' layout: [1, tokens, heads, head_dim]
    return out.transpose(1, 2).reshape(1, sequences, queries.shape[1], head_dim), None


def install() -> None:
    """Route ``sdpa`` through :func:`decode_attention` in this process."""
    AttentionInterface.register("sdpa", decode_attention)
