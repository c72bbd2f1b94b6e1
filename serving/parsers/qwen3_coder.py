"""Qwen3-Coder's XML tool calls: ``<tool_call><function=NAME><parameter=KEY>value</parameter>…</function>
</tool_call>``. Values are bare text, typed by the tool's parameter schema (a string stays text; a number,
boolean, object or array is read as JSON, and stays text if it is not). A parameter is sent once it is complete,
so the arguments object grows a member at a time."""

from __future__ import annotations

import json
import re
from typing import Any

from serving.parsers.calls import CallFormat, Found

_FUNCTION = re.compile(r"\s*<function=([A-Za-z0-9_.-]+)>")
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)
# A last parameter whose closing tag the model left out ends at the function's end, once the call is complete.
_UNCLOSED = re.compile(r"<parameter=([^>\s]+)>(.*?)(?:</parameter>|(?=<parameter=|</function>|\Z))", re.DOTALL)
_FUNCTION_END = "</function>"


class Qwen3Coder(CallFormat):
    opening = "<tool_call>"
    closing = "</tool_call>"

    def _types(self, function: str) -> dict[str, Any]:
        for tool in self.tools:
            spec = tool.get("function", tool)
            if spec.get("name") == function:
                properties = (spec.get("parameters") or {}).get("properties") or {}
                return {key: (schema or {}).get("type") for key, schema in properties.items()}
        return {}

    @staticmethod
    def _value(text: str, kind: Any) -> Any:
        text = text.removeprefix("\n").removesuffix("\n")
        if kind == "string" or (isinstance(kind, list) and "string" in kind):
            return text
        try:
            return json.loads(text)
        except ValueError:
            return text

    def calls(self, body: str, final: bool) -> list[Found] | None:
        function = _FUNCTION.match(body)
        if function is None:
            return None if final else []
        inside = body[function.end() :]
        end = inside.find(_FUNCTION_END)
        complete = final or end >= 0
        if end >= 0:
            if final and inside[end + len(_FUNCTION_END) :].strip():
                return None  # one function per block
            inside = inside[:end]
        types = self._types(function.group(1))
        pattern = _UNCLOSED if complete else _PARAMETER
        members = [
            json.dumps(key) + ": " + json.dumps(self._value(value, types.get(key)))
            for key, value in pattern.findall(inside)
        ]
        arguments = "{" + ", ".join(members)
        if not complete:
            return [Found(function.group(1), arguments)]
        return [Found(function.group(1), arguments + "}")]
