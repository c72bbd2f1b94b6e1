"""How many prompt tokens each request found in the paged cache's shared prefix blocks. Transformers' manager
matches them (``PagedAttentionCache.search_prefix_match``, when block sharing is on) but reports the count nowhere,
so the match is wrapped, once per process, to record it by request id for the engine to report
(``usage.prompt_tokens_details.cached_tokens``). Without that method (another transformers release) nothing is
recorded and the count is left out, never made up."""

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.Lock()
_matched: dict[str, int] = {}  # request id -> prompt tokens found cached, until the engine takes it
_installed = False


def install() -> bool:
    """Wrap the manager's prefix match (idempotent); whether it could be."""
    global _installed
    from transformers.generation.continuous_batching import cache

    with _lock:
        if _installed:
            return True
        holder = getattr(cache, "PagedAttentionCache", None)
        original = getattr(holder, "search_prefix_match", None)
        if holder is None or original is None:
            return False

        @functools.wraps(original)
        def search_prefix_match(self: Any, request_id: str, prompt_ids: list[int]) -> int:
            matched = original(self, request_id, prompt_ids)
            with _lock:
                _matched[str(request_id)] = int(matched)
            return int(matched)

        holder.search_prefix_match = search_prefix_match
        _installed = True
        return True


def take(request_id: str) -> int | None:
    """The cached prompt tokens recorded for a request since the last take, None when none were."""
    with _lock:
        return _matched.pop(request_id, None)
