"""From a sequence's token ids to the text a client may see: incremental detokenisation with stop strings.

Text that could still turn into a stop string is held back until it can no longer match, so a client never
sees part of a stop string; once one matches, the text is cut before it and the sequence stops.
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
    ) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._stops = [s for s in stop if s]
        self._end_ids = frozenset(end_token_ids)
        self._pending = ""
        self.stopped = False  # a stop string matched
        self.ended_by_token = False  # an EOS or stop token id ended the sequence

    def feed(self, token_ids: Iterable[int]) -> str:
        """Decode new tokens; return the text that is now safe to send."""
        if self.stopped:
            return ""
        for token_id in token_ids:
            if token_id in self._end_ids:
                self.ended_by_token = True
                break
            piece = self._decoder.step(self._backend, token_id)
            if piece:
                self._pending += piece
        return self._release()

    def _release(self) -> str:
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
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
