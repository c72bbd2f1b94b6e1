"""The worker's sampler draws from the distribution Hugging Face's warpers (temperature, then top-k, then top-p)
leave, and a seeded row's draws depend on its seed alone."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from workers.engines.transformers.sampling import NUCLEUS_SEARCH, RowParams, draw, row_distribution

VOCAB = 5000


def reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return torch.softmax(warpers(torch.zeros(1, 1, dtype=torch.long), logits.clone()), dim=-1)


def dense(probs: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    probs = probs / probs.sum(dim=-1, keepdim=True)
    if ids is None:
        return probs
    return torch.zeros(probs.size(0), VOCAB, dtype=probs.dtype).scatter(1, ids, probs)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "spread"),
    [
        (1.0, 0, 1.0, 3.0),  # plain sampling
        (0.7, 40, 1.0, 3.0),  # top-k alone
        (1.0, 0, 0.9, 3.0),  # top-p with a nucleus among the likeliest 1,024
        (1.0, 0, 0.95, 0.05),  # top-p whose nucleus is wider than 1,024 tokens: the whole row is sorted
        (1.3, 50, 0.8, 3.0),  # both
        (1.0, 2000, 0.99, 0.05),  # top-k wider than the first search
    ],
)
def test_rows_follow_huggingface_warpers(temperature: float, top_k: int, top_p: float, spread: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * spread
    probs, ids = row_distribution(logits / temperature, [top_k] * 3, [top_p] * 3)
    expected = torch.cat([reference(logits[i : i + 1], temperature, top_k, top_p) for i in range(3)])
    assert torch.allclose(dense(probs, ids), expected, atol=1e-5)


def test_rows_with_different_parameters_share_one_pass() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, VOCAB) * 2
    params = [(1.0, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.5), (1.0, 300, 0.9)]
    probs, ids = row_distribution(logits, [k for _, k, _ in params], [p for _, _, p in params])
    expected = torch.cat([reference(logits[i : i + 1], *params[i]) for i in range(4)])
    assert torch.allclose(dense(probs, ids), expected, atol=1e-5)


def test_wide_nucleus_is_exact() -> None:
    flat = torch.zeros(1, VOCAB)  # every token equally likely: the nucleus of 0.5 holds half the vocabulary
    probs, ids = row_distribution(flat, [0], [0.5])
    kept = int((dense(probs, ids) > 0).sum())
    assert NUCLEUS_SEARCH < kept <= VOCAB // 2 + 1


def test_top_k_rows_only_draw_allowed_tokens() -> None:
    torch.manual_seed(2)
    logits = torch.randn(64, VOCAB)
    allowed = logits.topk(3, dim=-1).indices
    tokens = draw(logits, [RowParams(1.0, 3, 1.0, None)] * 64)
    assert all(int(t) in allowed[i].tolist() for i, t in enumerate(tokens))


def test_a_seeded_row_ignores_its_neighbours() -> None:
    torch.manual_seed(3)
    row = torch.randn(1, VOCAB)

    def seeded_draws(neighbours: int) -> list[int]:
        generator = torch.Generator().manual_seed(42)
        out = []
        for _ in range(20):
            batch = torch.cat([torch.randn(neighbours, VOCAB), row])
            params = [RowParams(1.0, 0, 0.9, None)] * neighbours + [RowParams(1.0, 0, 0.9, generator)]
            out.append(int(draw(batch, params)[-1]))
        return out

    assert seeded_draws(0) == seeded_draws(5)
    assert len(set(seeded_draws(0))) > 1  # it does sample
