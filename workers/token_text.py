"""The text and bytes of single tokens, for logprobs.

A token can be a fragment of a UTF-8 character (byte-level BPE splits rare characters into bytes). Decoded alone
it would read as U+FFFD, and different fragments would look alike; such tokens are named by their bytes instead,
``bytes:\\xe2\\x80``, as OpenAI names them, and ``bytes`` always carries the raw bytes.
"""

from __future__ import annotations

import re
from typing import Any

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
