"""Sampling for transformers' continuous-batching manager: temperature, top-k, top-p and per-request seeds in one
logits processor at the end of the chain.

The manager's own per-request warpers each sort the whole vocabulary of every row at every step, greedy rows
included (top-k, then top-p: two full sorts of ``rows x vocab``), and its sampler then takes a softmax and a
multinomial draw over every row again. On a CPU that was a fifth of a decode step at 16 sequences. Here the
manager runs greedy (``do_sample=False``: it takes the argmax of what the chain leaves), and this processor
samples only the rows that sample, leaving each such row a single finite logit, so the manager's argmax can only
pick the token drawn here. A greedy row is not touched at all. Top-k takes ``torch.topk`` of the largest k in the
batch instead of a sort; top-p looks for its nucleus among the 1,024 likeliest tokens first and sorts the whole row
only when the nucleus is larger than that.

A request with a seed gets its own ``torch.Generator`` and its row is drawn alone, so the same seed and
parameters give the same tokens whatever else shares the batch. The rest draw from torch's generator of the
manager's thread (``ContinuousBatchingConfig.seed``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from workers.engines.transformers.processors import KeyedProcessor, add_to_chain

log = logging.getLogger(__name__)

SEED_KWARG = "qc_seed"
# the kwargs a request passes to the manager's add_request (the manager's own names, for familiarity)
TEMPERATURE_KWARG = "temperature"
TOP_P_KWARG = "top_p"
TOP_K_KWARG = "top_k"
# top-p's nucleus is looked for among this many likeliest tokens before the whole row is sorted
NUCLEUS_SEARCH = 1024


@dataclass(frozen=True)
class RowParams:
    temperature: float
    top_k: int  # 0: no top-k
    top_p: float
    generator: torch.Generator | None


def row_distribution(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> tuple[torch.Tensor, Any]:
    """Rows of (unnormalised) probabilities to draw from after top-k then top-p, as Hugging Face's warpers apply
    them, and the token ids their columns stand for (None: the columns are the vocabulary itself)."""
    vocab = logits.size(-1)
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    probs = torch.softmax(logits, dim=-1)
    if max(ks) == vocab and min(top_p) >= 1.0:
        return probs, None
    widest = max(ks)
    width = widest if widest < vocab else min(vocab, NUCLEUS_SEARCH)
    values, ids = probs.topk(width, dim=-1)  # sorted, likeliest first
    # a row whose top-k reaches past the columns taken, or whose nucleus is wider than them, needs its whole row
    too_wide = any(width < k < vocab for k in ks) or any(
        k == vocab and (p >= 1.0 or float(row_sum) < p)
        for k, p, row_sum in zip(ks, top_p, values.sum(dim=-1).tolist(), strict=True)
    )
    if too_wide and width < vocab:
        width = vocab
        values, ids = probs.sort(dim=-1, descending=True)
    columns = torch.arange(width, device=logits.device)
    k_limit = torch.tensor(ks, device=logits.device).unsqueeze(1)
    values = values.masked_fill(columns >= k_limit, 0.0)
    # top-p over the distribution top-k left, renormalised (a row without top-k keeps the whole vocabulary's
    # normalisation, although only its likeliest columns were taken); the likeliest token always stays
    values = values / torch.where(k_limit < vocab, values.sum(dim=-1, keepdim=True), 1.0)
    p_limit = torch.tensor([p if p < 1.0 else float("inf") for p in top_p], device=logits.device).unsqueeze(1)
    outside = (values.cumsum(dim=-1) - values) >= p_limit
    outside[:, 0] = False
    return values.masked_fill(outside, 0.0), ids


def draw(logits: torch.Tensor, params: list[RowParams]) -> torch.Tensor:
    """One token per row of ``logits`` (already divided by temperature) for rows that sample."""
    tokens = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
    # rows without a generator of their own are drawn together: those that keep the whole vocabulary, and apart
    # from them (so they never make the others sort the whole row) those that truncate it
    vocab = logits.size(-1)
    plain = [i for i, p in enumerate(params) if p.generator is None and p.top_p >= 1.0 and not 0 < p.top_k < vocab]
    plain_set = set(plain)
    truncated = [i for i, p in enumerate(params) if p.generator is None and i not in plain_set]
    for group in (plain, truncated):
        if not group:
            continue
        rows = logits[group] if len(group) < len(params) else logits
        probs, ids = row_distribution(rows, [params[i].top_k for i in group], [params[i].top_p for i in group])
        picked = torch.multinomial(probs, 1)
        tokens[group] = (picked if ids is None else ids.gather(1, picked)).squeeze(1)
    for i, p in enumerate(params):
        if p.generator is not None:
            # drawn on the CPU, where the request's generator lives, so a seed means the same on any device
            probs, ids = row_distribution(logits[i : i + 1].float().cpu(), [p.top_k], [p.top_p])
            picked = torch.multinomial(probs, 1, generator=p.generator)
            tokens[i] = (picked if ids is None else ids.gather(1, picked)).reshape(())
    return tokens


class Sampler(KeyedProcessor):
    """The last processor of the chain: draws the token of every row that samples (see the module's docstring).
    A greedy row gets no payload (key -1) and is left to the manager's argmax."""

    supported_kwargs: dict[str, type] = {
        TEMPERATURE_KWARG: float,
        TOP_P_KWARG: float,
        TOP_K_KWARG: int,
        SEED_KWARG: int,
    }

    def __init__(self) -> None:
        super().__init__()
        self._generators: dict[str, torch.Generator] = {}  # request id -> its own generator

    def payload_of(self, request: Any) -> RowParams | None:
        kwargs = request.state.logit_processor_kwargs
        top_k = int(kwargs.get(TOP_K_KWARG) or 0)
        if top_k == 1:
            return None
        generator = None
        seed = kwargs.get(SEED_KWARG)
        if seed is not None:  # called under the processor's lock
            request_id = str(request.state.request_id)
            generator = self._generators.get(request_id)
            if generator is None:
                # Any integer maps into the generator's 64-bit seed space: raising here would kill the whole loop.
                generator = self._generators[request_id] = torch.Generator().manual_seed(int(seed) % 2**64)
        return RowParams(
            temperature=float(kwargs.get(TEMPERATURE_KWARG, 1.0)),
            top_k=top_k,
            top_p=float(kwargs.get(TOP_P_KWARG, 1.0)),
            generator=generator,
        )

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        found = self.take_payloads(scores, tensor_arg)
        if not found:
            return scores
        rows = [row for row, _ in found]
        params = [p for _, p in found]
        try:
            index = torch.tensor(rows, device=scores.device)
            temperatures = torch.tensor([p.temperature for p in params], device=scores.device, dtype=scores.dtype)
            tokens = draw(scores.index_select(0, index) / temperatures.unsqueeze(1), params)
        except RuntimeError:
            # e.g. a row with no finite logit left; an exception here would end the loop for every sequence
            log.exception("sampling failed for %d rows; they take their likeliest token", len(rows))
            return scores
        chosen = scores.new_full((len(rows), scores.size(1)), float("-inf"))
        chosen.scatter_(1, tokens.unsqueeze(1), 0.0)
        scores.index_copy_(0, index, chosen)
        return scores

    def release(self, request_id: str) -> None:
        with self._lock:
            self._generators.pop(request_id, None)


def install(manager: Any) -> Sampler:
    """Append the sampler to a greedy manager's logits processors; call before ``manager.start()``."""
    if getattr(manager.generation_config, "do_sample", False):
        raise ValueError("the sampler needs a manager that takes the argmax (a generation config without do_sample)")
    sampler = Sampler()
    add_to_chain(manager, sampler)
    return sampler
