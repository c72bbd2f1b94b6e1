"""A cheap bound on a prompt's size, checked by the front server before a job is queued: a prompt far longer than
the model's context is refused with 400 ``context_length_exceeded`` before any worker tokenises it.

The bound is generous on purpose (:data:`CHARS_PER_TOKEN` characters per token of the largest context a live
worker of the model advertises): it only has to stop what cannot possibly fit, such as a 50 MB message that would
take a worker's memory. Whether a prompt near the context fits is the worker's exact check, after its own bounded
tokenisation (``workers/prompts.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.producer import Producer
from broker.schemas import Job, JobKind
from serving.errors import ContextLengthExceeded

# No tokenizer in use puts more characters than this in one token on average over a whole context
CHARS_PER_TOKEN = 64


def text_chars(value: Any) -> int:
    """Characters in every string of ``value`` (messages, tools: what a chat template renders)."""
    total, todo = 0, [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return total


def _too_long(job: Job, max_model_len: int) -> str | None:
    """Why the job's prompt cannot fit, or None."""
    if job.kind == JobKind.CHAT:
        chars = text_chars(job.messages) + text_chars(job.tools)
        bound = max_model_len * CHARS_PER_TOKEN
        return f"the messages have {chars} characters, more than {bound} can be" if chars > bound else None
    if isinstance(job.prompt, list):  # token ids: known exactly
        return f"the prompt has {len(job.prompt)} tokens" if len(job.prompt) > max_model_len else None
    chars = len(job.prompt or "")
    bound = max_model_len * CHARS_PER_TOKEN
    return f"the prompt has {chars} characters, more than {bound} can be" if chars > bound else None


async def check_prompt_sizes(producer: Producer, jobs: Sequence[Job]) -> None:
    """Raise ContextLengthExceeded for a chat or completion job whose prompt cannot fit the model's context."""
    generating = [j for j in jobs if j.kind in (JobKind.CHAT, JobKind.COMPLETION)]
    if not generating:
        return
    max_model_len = await producer.max_model_len(generating[0].model)
    if max_model_len is None:
        return
    for job in generating:
        why = _too_long(job, max_model_len)
        if why is not None:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens; {why} (refused before "
                "tokenising). Please reduce the length of the messages or prompt.",
                param="messages" if job.kind == JobKind.CHAT else "prompt",
            )
