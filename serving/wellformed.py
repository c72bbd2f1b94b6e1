"""What any value of a request must be before it can become a job: text that is valid Unicode, nested no deeper
than :data:`MAX_NESTING`.

JSON lets a string carry a lone UTF-16 surrogate (``"\\ud800"``), which Python decodes into a ``str`` that no
UTF-8 encoder takes, and lets a schema nest hundreds of levels, past what the job's serialiser (and a grammar
compiler) recurse into; both failed only when the job was written, as a 500. Checked here, they are a 400 naming
the parameter.
"""

from __future__ import annotations

import re
from typing import Any

# Far more than any real request needs (OpenAI's structured outputs allow 10 levels of schema nesting, about 20 of
# JSON), far less than the depths serialisers and grammar compilers give up at.
MAX_NESTING = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHECKED = (str, dict, list, tuple)  # numbers, booleans and null are fine at any depth they are reached at


def _path(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def check_wellformed(value: Any, name: str) -> None:
    """Raise ValueError (a 400 naming ``name``) for a lone surrogate in any string of ``value`` (keys too) or for
    nesting deeper than MAX_NESTING. Iterative, so a deep value cannot exhaust the stack here either."""
    todo: list[tuple[Any, list[str | int]]] = [(value, [name])]
    while todo:
        item, path = todo.pop()
        if len(path) > MAX_NESTING + 1:
            raise ValueError(f"{_path(path[:3])}… is nested more than {MAX_NESTING} levels deep")
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ValueError(
                    f"{_path(path)} holds a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode text"
                )
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise ValueError(f"a key in {_path(path)} holds a lone UTF-16 surrogate, which is not valid text")
                if isinstance(inner, _CHECKED):
                    todo.append((inner, [*path, str(key)]))
        elif isinstance(item, list | tuple):
            todo.extend((inner, [*path, i]) for i, inner in enumerate(item) if isinstance(inner, _CHECKED))
