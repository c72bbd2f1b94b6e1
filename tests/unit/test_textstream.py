"""Incremental detokenisation and stop strings, with the tiny model's real BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from workers.textstream import TextStream


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def feed_one_by_one(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.feed([i]) for i in ids]


def test_streamed_text_equals_batch_decode(tokenizer) -> None:
    text = "The capital of France is Paris. Ünïcødé 你好 🙂 done"
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    pieces = feed_one_by_one(stream, ids)
    assert "".join(pieces) + stream.flush() == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # multi-byte characters are never split


def test_stop_string_is_cut_and_never_shown(tokenizer) -> None:
    ids = tokenizer.encode("Redis streams carry jobs; workers read them")
    stream = TextStream(tokenizer, stop=["carry jobs"])
    shown = "".join(feed_one_by_one(stream, ids)) + stream.flush()
    assert stream.stopped
    assert shown == "Redis streams "


def test_partial_stop_is_held_back_then_released(tokenizer) -> None:
    stream = TextStream(tokenizer, stop=["Paris!"])
    ids = tokenizer.encode("Rome Paris. More")
    shown = []
    for i in ids:
        out = stream.feed([i])
        shown.append(out)
        assert not "".join(shown).endswith("Pari")  # a possible stop prefix is not shown yet
    assert not stream.stopped
    assert "".join(shown) + stream.flush() == "Rome Paris. More"


def test_end_token_ends_without_text(tokenizer) -> None:
    eos = tokenizer.eos_token_id
    stream = TextStream(tokenizer, end_token_ids=[eos])
    out = stream.feed([*tokenizer.encode("hello"), eos])
    assert out == "hello" and stream.ended_by_token
