"""JSON schemas (JSON mode, ``json_schema``, forced tool calls) as llguidance grammars, for any engine."""

from __future__ import annotations

from typing import Any

from workers.prompts import PromptError


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
        raise PromptError(f"the JSON schema cannot be used: {problem}", param="response_format")
    return grammar
