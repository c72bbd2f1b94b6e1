"""Redis replies decoded in one place: the small parsers every reader of a record shares (sync or async).

A client made by :mod:`broker.connection` answers bytes; these turn them into text, once, for the registry, the
stream groups, the batch and file records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.keys import CONSUMER_GROUP


def text(value: Any) -> str:
    """A reply's bytes (or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash (HGETALL) as text keys and values."""
    return {text(k): text(v) for k, v in raw.items()}


def group_info(reply: Any, name: str = CONSUMER_GROUP) -> dict[str, Any] | None:
    """One group from an XINFO GROUPS reply; None when the stream or the group does not exist (the reply is then an
    error, with ``raise_on_error=False``)."""
    if not isinstance(reply, list):
        return None
    for group in reply:
        if text(group.get("name", b"")) == name:
            return dict(group)
    return None
