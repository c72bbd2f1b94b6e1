"""The text and bytes of single tokens, for logprobs.

A token can be a fragment of a UTF-8 character (byte-level BPE splits rare characters into bytes). Decoded alone
it would read as U+FFFD, and different fragments would look alike; such tokens are named by their bytes instead,
``bytes:\\xe2\\x80``, as OpenAI names them, and ``bytes`` always carries the raw bytes.
"""

from __future__ import annotations

import re
from typing import Any

from broker.schemas import TokenLogprob, TopLogprob
from workers.engine import SeqUpdate

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece's byte tokens


def _byte_level_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


class TokenTexts:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._decoder = _byte_level_decoder()
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def _raw_bytes(self, token_id: int, text: str) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            fallback = BYTE_FALLBACK.match(piece)
            if fallback:
                return bytes([int(fallback.group(1), 16)])
            if all(char in self._decoder for char in piece):
                return bytes(self._decoder[char] for char in piece)
        return text.encode()

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        """(text, bytes) of one token."""
        cached = self._cache.get(token_id)
        if cached is None:
            text = self.tokenizer.decode([token_id])
            raw = self._raw_bytes(token_id, text) if "\ufffd" in text else text.encode()
            if "\ufffd" in text:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            cached = self._cache[token_id] = (text, list(raw))
        return cached


class TokenLogprobs:
    """Logprobs as the protocol carries them: each token's text and bytes beside its logprob and alternatives."""

    def __init__(self, tokenizer: Any) -> None:
        self._texts = TokenTexts(tokenizer)

    def entry(self, token_id: int, logprob: float | None, alternatives: list[tuple[int, float]]) -> TokenLogprob:
        text, raw = self._texts(token_id)
        top = []
        for alternative, alternative_logprob in alternatives:
            alt_text, alt_raw = self._texts(alternative)
            top.append(TopLogprob(token=alt_text, logprob=alternative_logprob, bytes=alt_raw))
        return TokenLogprob(token=text, logprob=logprob, bytes=raw, top_logprobs=top)

    def of_update(self, update: SeqUpdate) -> list[TokenLogprob]:
        chosen = update.logprobs or []
        tops = update.top_logprobs or [[] for _ in update.token_ids]
        return [
            self.entry(t, lp, alternatives) for t, lp, alternatives in zip(update.token_ids, chosen, tops, strict=False)
        ]

    def of_prompt(
        self, prompt_ids: list[int], scored: list[tuple[float | None, list[tuple[int, float]]]]
    ) -> list[TokenLogprob]:
        return [self.entry(t, lp, top) for t, (lp, top) in zip(prompt_ids, scored, strict=True)]
