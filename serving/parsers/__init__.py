"""How a model writes reasoning and tool calls into its output, read back out of the text it generates.

The worker names its parsers (``--reasoning-parser``, ``--tool-call-parser``, the latter picked from the chat
template by default) and tells them in each chat job's ``accepted`` event; the front end splits the output with
them, whole or as it streams. Each parser family has its own module:

- :mod:`serving.parsers.think`: reasoning between ``<think>`` and ``</think>`` (DeepSeek-R1, Qwen3, and kin).
- :mod:`serving.parsers.hermes`, :mod:`~serving.parsers.llama3_json`, :mod:`~serving.parsers.mistral`,
  :mod:`~serving.parsers.qwen3_coder`: tool-call formats, on the incremental reader of :mod:`serving.parsers.calls`.
"""

from __future__ import annotations

from typing import Any

from serving.parsers.calls import CallFormat, CallParser
from serving.parsers.hermes import Hermes
from serving.parsers.llama3_json import Llama3Json
from serving.parsers.mistral import Mistral
from serving.parsers.qwen3_coder import Qwen3Coder
from serving.parsers.think import REASONING_TAGS, ReasoningSplitter

TOOL_CALL_FORMATS: dict[str, type[CallFormat]] = {
    "hermes": Hermes,
    "llama3_json": Llama3Json,
    "mistral": Mistral,
    "qwen3_coder": Qwen3Coder,
}
REASONING_PARSERS = tuple(REASONING_TAGS)
# Formats whose markers are special tokens in their models' tokenizers: the worker keeps special tokens in the text
# of the jobs offered tools, so that the markers reach the parser.
SPECIAL_TOKEN_FORMATS = frozenset({"mistral"})
AUTO = "auto"

# What in a chat template gives its tool-call format away, most specific first: Qwen3-coder's template also
# mentions <tool_call>, Llama 3.1's <|python_tag|> is for its built-in tools, 3.2's only says "parameters".
_TEMPLATE_MARKERS = (
    ("<function=", "qwen3_coder"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_tag|>", "llama3_json"),
    ('"parameters": dictionary of argument name', "llama3_json"),
    ("<tool_call>", "hermes"),
)


def tool_call_parser_for(name: str, chat_template: str | None) -> str:
    """The tool-call format a worker reads: ``name`` itself, or for ``auto`` the one its chat template asks for
    (Hermes when it names none: the tools prompt the worker adds for such templates asks for Hermes).
    ValueError naming the choices for an unknown name."""
    if name == AUTO:
        template = chat_template or ""
        return next((found for marker, found in _TEMPLATE_MARKERS if marker in template), "hermes")
    if name not in TOOL_CALL_FORMATS:
        raise ValueError(f"--tool-call-parser {name!r}: not one of {AUTO}, {', '.join(TOOL_CALL_FORMATS)}")
    return name


def check_reasoning_parser(name: str | None) -> str | None:
    """``name`` if it is a reasoning parser (None: none), else ValueError naming the choices."""
    if name is not None and name not in REASONING_TAGS:
        raise ValueError(f"--reasoning-parser {name!r}: not one of {', '.join(REASONING_TAGS)}")
    return name


def call_parser(name: str | None, tools: list[dict[str, Any]] | None = None) -> CallParser:
    """An incremental reader of the calls in one choice's output, in format ``name`` (Hermes when the worker named
    none: an older worker). ``tools``: the request's, for formats whose arguments are typed by their schemas."""
    return CallParser(TOOL_CALL_FORMATS.get(name or "hermes", Hermes)(tools or []))


__all__ = [
    "AUTO",
    "REASONING_PARSERS",
    "SPECIAL_TOKEN_FORMATS",
    "TOOL_CALL_FORMATS",
    "CallParser",
    "ReasoningSplitter",
    "call_parser",
    "check_reasoning_parser",
    "tool_call_parser_for",
]
