"""Llama 3.1-3.3's JSON tool calls: the whole answer is the calls, ``{"name": ..., "parameters": {...}}``, several
separated by ``;``, after ``<|python_tag|>`` or not (it is a special token, which decoding usually leaves out)."""

from __future__ import annotations

from serving.parsers.calls import CallFormat, Found, json_calls

PYTHON_TAG = "<|python_tag|>"


class Llama3Json(CallFormat):
    def find_opening(self, text: str, at_start: bool) -> tuple[int, int] | None:
        if not at_start:
            return None
        head = text.lstrip()
        start = len(text) - len(head)
        if head.startswith(PYTHON_TAG):
            return start, start + len(PYTHON_TAG)
        return (start, start) if head.startswith("{") else None

    def holds(self, text: str, at_start: bool) -> int:
        head = text.lstrip()
        return len(text) if at_start and PYTHON_TAG.startswith(head) else 0

    def calls(self, body: str, final: bool) -> list[Found] | None:
        return json_calls(body, final, separator=";")
