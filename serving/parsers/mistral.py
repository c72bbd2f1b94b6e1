"""Mistral's tool calls after ``[TOOL_CALLS]``, to the end of the answer: a JSON array of
``{"name": ..., "arguments": {...}}`` (tokenizers up to v7), or each call as ``name[ARGS]{...}`` behind its own
``[TOOL_CALLS]`` (v11 on, optionally with ``[CALL_ID]id`` before ``[ARGS]``)."""

from __future__ import annotations

import re

from serving.parsers.calls import CallFormat, Found, is_object, json_calls, json_value_end

TOOL_CALLS = "[TOOL_CALLS]"
_NAMED = re.compile(r"\s*([A-Za-z0-9_.-]+)(?:\[CALL_ID\][A-Za-z0-9]+)?\[ARGS\]\s*")


def _named_calls(body: str, final: bool) -> list[Found] | None:
    found: list[Found] = []
    for segment in body.split(TOOL_CALLS):
        head = _NAMED.match(segment)
        if head is None:
            return None if final else found
        arguments = segment[head.end() :]
        end = json_value_end(arguments, 0) if arguments.startswith("{") else None
        if final:
            if end is None or arguments[end:].strip() or not is_object(arguments[:end]):
                return None
        elif not arguments.startswith("{"):
            return found
        found.append(Found(head.group(1), arguments[:end]))
    return found


class Mistral(CallFormat):
    opening = TOOL_CALLS

    def calls(self, body: str, final: bool) -> list[Found] | None:
        head = body.lstrip()
        if head.startswith("["):
            return json_calls(head[1:], final, separator=",", closing="]")
        if final and head.startswith("{"):  # a single call object, without the array
            return json_calls(head, final)
        return _named_calls(body, final)
