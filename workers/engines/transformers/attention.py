"""Decode-step attention for transformers' continuous batching where it runs on ``sdpa`` (the CPU).

Without flash attention the manager packs every sequence of a step into one row: the keys of all sequences side
by side, and a dense mask that lets each query see only its own sequence. A decode step then costs every query
the keys of every sequence (quadratic in the batch), plus copying the key/value heads once per query head. Here a
step in which every sequence decodes one token gathers each sequence's keys into a padded batch instead
(``batch x longest``) and lets ``scaled_dot_product_attention`` share the key/value heads (``enable_gqa``); the
result is the same (greedy output is token for token identical). Every other call (prefill, a step that mixes
prefill and decode, a model with sliding windows or attention sinks, anything outside continuous batching) goes
to transformers' own ``sdpa`` unchanged.

For the same steps the paged cache's update is taken over too: it writes the new keys and values as transformers
does, then reads each sequence's keys from the cache straight into the padded batch, where transformers would first
copy every key of the step into one row for the attention to copy once more. It does so only for caches whose
layers are all full attention, of models without attention sinks or logit soft-capping, and says so to the
attention through a keyword, so the two never disagree about the layout of the keys.

Both registrations are process-wide (transformers looks attention functions up by name and the cache's update is a
method of its class), so a worker installs them once for its CPU engine; every other call in the process still
gets transformers' own code. The attention cannot take a name of its own: the manager accepts only ``sdpa``,
``paged|eager`` and flash implementations (transformers 5.19-5.24), so it is registered as ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.cache_allocators.full_attention import FullAttentionCacheAllocator
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# set by the cache's decode update: the keys and values come padded ([sequences, kv heads, width, head dim]) and
# this is their [sequences, width] mask of real positions
PADDED_MASK_KWARG = "qc_padded_mask"
_original_update = PagedAttentionCache.update


def _update(
    cache: Any, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own cache update (its method is not annotated)."""
    keys, values = _original_update(cache, key_states, value_states, layer_idx, kwargs)
    return keys, values


_last_layout: tuple[tuple[tuple[int, ...], int], tuple[torch.Tensor, torch.Tensor]] | None = None
# decode-step attention calls that took the padded path (per layer), so a test can tell the fast path ran
fast_path_calls = 0


def padded_layout(cu_seq_lens_k: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For sequences laid side by side (boundaries ``cu_seq_lens_k``): the position of each cell of the padded
    ``[sequences, width]`` batch in the side-by-side layout (0 for padding), flat, and the mask of real cells.
    Every layer of a step asks for the same layout, so the last one is kept."""
    global _last_layout
    key = (tuple(cu_seq_lens_k.tolist()), width)
    last = _last_layout
    if last is not None and last[0] == key:
        return last[1]
    starts = cu_seq_lens_k[:-1].long()
    lengths = cu_seq_lens_k[1:].long() - starts
    columns = torch.arange(width, device=cu_seq_lens_k.device)
    valid = columns.unsqueeze(0) < lengths.unsqueeze(1)
    index = torch.where(valid, starts.unsqueeze(1) + columns.unsqueeze(0), 0).reshape(-1)
    _last_layout = (key, (index, valid))
    return index, valid


def _fusable(cache: Any) -> bool:
    fusable = getattr(cache, "_qc_fusable", None)
    if fusable is None:
        config = cache.config
        fusable = cache._qc_fusable = (
            # the padded keys are for decode_attention alone: another attention function would misread them
            getattr(config, "_attn_implementation", None) == "sdpa"
            and all(isinstance(a, FullAttentionCacheAllocator) for a in cache.cache_allocators.values())
            and all(hasattr(a, "_kv_token_views") for a in cache.cache_allocators.values())
            and not getattr(config, "attn_logit_softcapping", None)
            and "sink" not in str(getattr(config, "model_type", ""))
            and getattr(config, "model_type", "") != "gpt_oss"
        )
    return bool(fusable)


def decode_cache_update(
    self: Any, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paged cache's update for a decode step on the CPU: write the new keys and values, then read each
    sequence's keys and values into the padded batch; any other step is transformers' own update."""
    if (
        kwargs.get("max_length_q") != 1
        or kwargs.get("block_table") is not None
        or key_states.device.type != "cpu"
        or key_states.shape[0] != 1
        or not _fusable(self)
    ):
        return _update(self, key_states, value_states, layer_idx, kwargs)
    allocator = self.layer_to_allocator[layer_idx]
    read_index = kwargs["read_index"][allocator.index]
    if read_index.numel() == 0:
        return _update(self, key_states, value_states, layer_idx, kwargs)
    cu_seq_lens_k = kwargs["cu_seq_lens_k"][allocator.layer_type].to(torch.int32)
    width = int(kwargs["max_length_k"][allocator.layer_type])
    k_cache, v_cache = allocator._kv_token_views[layer_idx]  # [cache tokens, kv heads, head dim]
    write_index = kwargs["write_index"][allocator.index]
    k_cache.index_copy_(0, write_index, key_states[0].transpose(0, 1))
    v_cache.index_copy_(0, write_index, value_states[0].transpose(0, 1))
    positions, valid = padded_layout(cu_seq_lens_k, width)
    slots = read_index.index_select(0, positions)
    sequences = valid.shape[0]
    keys = k_cache.index_select(0, slots).view(sequences, width, *k_cache.shape[1:]).transpose(1, 2)
    values = v_cache.index_select(0, slots).view(sequences, width, *v_cache.shape[1:]).transpose(1, 2)
    kwargs["cu_seq_lens_k"], kwargs["max_length_k"] = cu_seq_lens_k, width
    kwargs[PADDED_MASK_KWARG] = valid
    return keys, values


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
    padded_mask = kwargs.get(PADDED_MASK_KWARG)
    if padded_mask is not None:  # the cache read the keys into the padded batch already
        queries = query[0].transpose(0, 1).unsqueeze(2)  # [sequences, heads, 1, head_dim]
        return _padded_attention(queries, key, value, padded_mask, scaling), None
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
    width = int(kwargs["max_length_k"])
    index, valid = padded_layout(cu_seq_lens_k, width)
    sequences = valid.shape[0]
    kv_heads, head_dim = key.shape[1], key.shape[3]
    padded_keys = key[0].index_select(1, index).view(kv_heads, sequences, width, head_dim).transpose(0, 1)
    padded_values = value[0].index_select(1, index).view(kv_heads, sequences, width, head_dim).transpose(0, 1)
    queries = query[0].transpose(0, 1).unsqueeze(2)  # [sequences, heads, 1, head_dim]
    return _padded_attention(queries, padded_keys, padded_values, valid, scaling), None


def _padded_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """One query per sequence against its padded keys; in transformers' layout [1, tokens, heads, head_dim]."""
    global fast_path_calls
    fast_path_calls += 1
    sequences, heads, _, head_dim = queries.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        queries, keys, values, attn_mask=valid[:, None, None, :], scale=scaling, enable_gqa=heads != keys.shape[1]
    )
    return out.transpose(1, 2).reshape(1, sequences, heads, head_dim)


def install() -> None:
    """Route ``sdpa`` through :func:`decode_attention`, and the paged cache's update through
    :func:`decode_cache_update`, in this process."""
    AttentionInterface.register("sdpa", decode_attention)
    PagedAttentionCache.update = decode_cache_update  # type: ignore[method-assign]
