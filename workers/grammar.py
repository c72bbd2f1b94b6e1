"""JSON schemas (JSON mode, ``json_schema``, forced tool calls), regular expressions and choices among strings as
llguidance grammars, for any engine."""

from __future__ import annotations

import json
from typing import Any

from broker.errors import InvalidRequest


def json_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar for JSON output following ``schema`` (JSON mode is the schema ``{"type": "object"}``)."""
    import llguidance

    try:
        # Compact JSON: with free whitespace a model can pad forever without ever closing the object.
        grammar = str(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False}))
        problem = llguidance.LLMatcher.validate_grammar(grammar)
    except Exception as exc:  # llguidance reports some bad schemas by raising
        problem = str(exc)
    if problem:
        raise InvalidRequest(f"the JSON schema cannot be used: {problem}", param="response_format")
    return grammar


def _checked(make: Any, param: str) -> str:
    import llguidance

    try:
        grammar = str(make())
        problem = llguidance.LLMatcher.validate_grammar(grammar)
    except Exception as exc:  # llguidance reports some bad input by raising
        problem = str(exc)
    if problem:
        raise InvalidRequest(f"the {param} cannot be used: {problem}", param=param)
    return grammar


def regex_grammar(regex: str) -> str:
    """The llguidance grammar for output matching ``regex`` (Rust regex syntax, as vLLM's guided_regex)."""
    import llguidance

    return _checked(lambda: llguidance.LLMatcher.grammar_from_regex(regex), "guided_regex")


def choice_grammar(choices: list[str]) -> str:
    """The llguidance grammar for output that is exactly one of ``choices``."""
    import llguidance

    lark = "start: " + " | ".join(json.dumps(c) for c in choices)  # JSON string literals are Lark's
    return _checked(lambda: llguidance.LLMatcher.grammar_from_lark(lark), "guided_choice")


def grammar_of(schema: dict[str, Any] | None, regex: str | None, choice: list[str] | None) -> str | None:
    """The grammar of whichever constraint a job has, None for none."""
    if schema is not None:
        return json_grammar(schema)
    if regex is not None:
        return regex_grammar(regex)
    if choice is not None:
        return choice_grammar(choice)
    return None
