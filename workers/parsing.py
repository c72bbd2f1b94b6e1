"""The worker's ``--reasoning-parser`` and ``--tool-call-parser``: chosen once at startup (the tool-call format
from the chat template with ``auto``), advertised in the worker's card, and told with each chat job's ``accepted``
event, with whether the job's prompt left a reasoning block open, so the front end reads the output right (the
parsers themselves are in :mod:`serving.parsers`, where the output is read)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.schemas import Job, JobKind
from serving.parsers import AUTO, SPECIAL_TOKEN_FORMATS, check_reasoning_parser, tool_call_parser_for
from serving.parsers.think import prompt_opens_reasoning

# Enough of a prompt's end to hold the opening of the assistant's turn and a reasoning tag after it.
_PROMPT_TAIL_TOKENS = 32


@dataclass(frozen=True)
class OutputParsers:
    reasoning: str | None = None
    tool_calls: str | None = None  # None: the front end's default (Hermes)

    @classmethod
    def choose(cls, reasoning: str | None, tool_calls: str, chat_template: Any) -> OutputParsers:
        """The parsers for these flags and this chat template; ValueError naming the choices for an unknown name."""
        template = chat_template if isinstance(chat_template, str) else str(chat_template or "")
        return cls(check_reasoning_parser(reasoning), tool_call_parser_for(tool_calls, template))

    def keeps_special_tokens(self, job: Job) -> bool:
        """Whether this job's text keeps special tokens: Mistral's call markers (``[TOOL_CALLS]``, ``[ARGS]``) are
        special tokens, which decoding otherwise leaves out (vLLM's Mistral parser turns skip_special_tokens off
        likewise). Only for chat jobs offered tools, so other answers never show a special token."""
        return job.kind == JobKind.CHAT and bool(job.tools) and self.tool_calls in SPECIAL_TOKEN_FORMATS

    def reasoning_open(self, tokenizer: Any, prompt_ids: list[int]) -> bool:
        """Whether the chat template ended this prompt inside a reasoning block (DeepSeek-R1's ``<think>``)."""
        if self.reasoning is None:
            return False
        tail = tokenizer.decode(prompt_ids[-_PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        return prompt_opens_reasoning(self.reasoning, tail)


def check_flags(reasoning: str | None, tool_calls: str) -> None:
    """ValueError for an unknown parser name, before the model is loaded."""
    check_reasoning_parser(reasoning)
    if tool_calls != AUTO:
        tool_call_parser_for(tool_calls, None)
