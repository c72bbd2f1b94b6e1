"""Per-request seeds for transformers' continuous-batching manager, which only has a manager-wide one.

A request with a seed gets its own ``torch.Generator``. The last logits processor of the chain samples that
request's row with it and leaves a single finite logit, so the manager's own sampling can only pick that token.
The same seed and parameters then give the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

SEED_KWARG = "qc_seed"


class SeededSampler(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {SEED_KWARG: int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}  # request id -> generator slot
        self._generators: dict[int, torch.Generator] = {}
        self._next_slot = 0

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(-1)  # -1: this row has no seed, leave it to the manager

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        slots = []
        with self._lock:
            for request in requests_with_new_token:
                seed = request.state.logit_processor_kwargs.get(SEED_KWARG)
                if seed is None:
                    slots.append(-1)
                    continue
                rid = request.state.request_id
                slot = self._slots.get(rid)
                if slot is None:
                    slot = self._slots[rid] = self._next_slot
                    self._next_slot = (self._next_slot + 1) % 2**31
                    # Any integer maps into the generator's 64-bit seed space: raising here would kill the whole loop.
                    self._generators[slot] = torch.Generator().manual_seed(int(seed) % 2**64)
                slots.append(slot)
        return torch.tensor(slots, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        slots = tensor_arg[: scores.size(0)].tolist()
        if max(slots, default=-1) < 0:
            return scores
        for row, slot in enumerate(slots):
            generator = self._generators.get(slot) if slot >= 0 else None
            if generator is None:
                continue
            probs = torch.softmax(scores[row].float().cpu(), dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores

    def release(self, request_id: str) -> None:
        with self._lock:
            slot = self._slots.pop(request_id, None)
            if slot is not None:
                self._generators.pop(slot, None)


def install(manager: Any) -> SeededSampler:
    """Append the sampler to a manager's logits processors; call before ``manager.start()``."""
    sampler = SeededSampler()
    processors = manager.logit_processor
    processors.logits_processor.append(sampler)
    processors.tensors_required += 1
    processors.supported_keys.update(sampler.supported_kwargs)
    processors.do_processing = True
    return sampler
