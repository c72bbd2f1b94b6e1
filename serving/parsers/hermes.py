"""Hermes tool calls (Qwen2.5, Hermes, and the tools prompt the worker adds for templates without tool support):
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call."""

from __future__ import annotations

from serving.parsers.calls import CallFormat, Found, json_calls


class Hermes(CallFormat):
    opening = "<tool_call>"
    closing = "</tool_call>"

    def calls(self, body: str, final: bool) -> list[Found] | None:
        return json_calls(body, final)
