"""Inputs that used to break the server rather than be refused: lone surrogates and very deep nesting."""

from __future__ import annotations

import json
from typing import Any

LONE = "a\ud800b"  # a lone UTF-16 surrogate: valid in JSON's escapes, never valid Unicode text


def deep_schema(levels: int = 300) -> dict[str, Any]:
    """A JSON schema nested ``levels`` objects deep."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def json_bytes(body: Any) -> bytes:
    """The body as JSON with every non-ASCII character escaped, so a lone surrogate travels as ``\\ud800`` (httpx's
    own encoding, UTF-8, cannot carry one)."""
    return json.dumps(body).encode()
