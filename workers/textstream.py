"""From a sequence's token ids to the text a client may see: incremental detokenisation with stop strings.

Text that could still turn into a stop string is held back until it can no longer match, so a client never
sees part of a stop string; once one matches, the text is cut before it (after it, with ``include_stop``) and the
sequence stops. Before ``min_tokens`` tokens no stop string is looked for (vLLM's ``min_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers.decoders import DecodeStream


class TextStream:
    def __init__(
        self,
        tokenizer: Any,
        stop: Iterable[str] = (),
        end_token_ids: Iterable[int] = (),
        *,
        skip_special_tokens: bool = True,
        stop_token_ids: Iterable[int] = (),
        min_tokens: int = 0,
        include_stop: bool = False,
    ) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._stops = [s for s in stop if s]
        self._end_ids = frozenset(end_token_ids)
        self._stop_ids = frozenset(stop_token_ids)  # of the end ids, those the request named
        self._min_tokens = min_tokens
        self._include_stop = include_stop
        self._tokens = 0
        self._pending = ""
        self.stopped = False  # a stop string matched
        self.ended_by_token = False  # an EOS or stop token id ended the sequence
        self.stop_reason: str | int | None = None  # the stop string or stop token id that ended it (not EOS)

    def feed(self, token_ids: Iterable[int]) -> str:
        """Decode new tokens; return the text that is now safe to send."""
        if self.stopped:
            return ""
        early = ""  # text of the tokens before min_tokens: no stop string is looked for in it
        for token_id in token_ids:
            if token_id in self._end_ids:
                self.ended_by_token = True
                self.stop_reason = token_id if token_id in self._stop_ids else None
                break
            piece = self._decoder.step(self._backend, token_id)
            self._tokens += 1
            if piece:
                self._pending += piece
            if self._tokens < self._min_tokens:
                early, self._pending = early + self._pending, ""
        return early + self._release()

    def _release(self) -> str:
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        found = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if found:
            cut, stop = min(found, key=lambda f: f[0])
            self.stopped = True
            self.stop_reason = stop
            end = cut + len(stop) if self._include_stop else cut
            out, self._pending = self._pending[:end], ""
            return out
        hold = self._partial_stop_suffix(self._pending)
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest

    def flush(self) -> str:
        """The sequence has ended: what was held back can no longer become a stop string."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
