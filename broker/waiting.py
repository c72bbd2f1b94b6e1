"""An estimate of the tokens a waiting job will cost its worker, read from the job as queued: what an autoscaler
scales on beside the count of waiting jobs (a few long prompts weigh more than many short ones).

The front server has no tokenizer, so the estimate counts a prompt given as token ids exactly and text at
:data:`CHARS_PER_TOKEN` characters a token (about right for English with the usual BPE tokenizers), plus the tokens
the job may generate where it says (``max_tokens`` for each of its ``n`` choices). It is a scaling signal, never a
limit.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4


def _text_and_ids(value: Any) -> tuple[int, int]:
    """Characters of every string in ``value``, and the token ids of its lists of integers."""
    chars = ids = 0
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            if item and all(isinstance(i, int) and not isinstance(i, bool) for i in item):
                ids += len(item)
            else:
                todo.extend(item)
    return chars, ids


def job_tokens(raw: bytes | str | None) -> int:
    """The estimated tokens of one queued job (its stream entry's ``job`` field); 0 for one that cannot be read."""
    if raw is None:
        return 0
    try:
        job = json.loads(raw)
    except ValueError:
        return 0
    if not isinstance(job, dict):
        return 0
    chars, ids = _text_and_ids([job.get(k) for k in ("messages", "tools", "prompt", "inputs")])
    params = job.get("params")
    if not isinstance(params, dict):
        params = {}
    max_tokens, n = params.get("max_tokens"), params.get("n", 1)
    generated = max_tokens * n if isinstance(max_tokens, int) and isinstance(n, int) else 0
    return ids + math.ceil(chars / CHARS_PER_TOKEN) + max(generated, 0)
