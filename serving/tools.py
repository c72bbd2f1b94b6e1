"""Function calling: what schema a forced call must follow, and how calls are read back out of generated text.

A forced call (``tool_choice`` "required" or a named function) is generated under a JSON-schema constraint, so it
is always well-formed: a named call's output is the arguments object itself; "required" outputs
``{"name": ..., "arguments": {...}}`` for one of the tools. With "auto" the model decides; calls are recognised
in the Hermes format (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``) that the chat template, or the
tools prompt the worker adds for templates without tool support, asks for.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving import responses


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | None

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
TOOL_CALL_OPEN = "<tool_call>"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI returns it
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def as_openai(self, index: int | None = None) -> responses.ChatCompletionMessageToolCall:
        """The call as a response carries it; ``index`` in stream chunks only."""
        function = responses.CalledFunction(name=self.name, arguments=self.arguments)
        return responses.ChatCompletionMessageToolCall(id=self.id, function=function, index=index)


def _parameters(function: FunctionDefinition) -> dict[str, Any]:
    return function.parameters or {"type": "object", "properties": {}}


def forced_call_schema(tools: list[ToolDefinition] | None, tool_choice: ToolChoice) -> dict[str, Any] | None:
    """The JSON schema the output must follow when the request forces a call, else None."""
    tools = tools or []
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        chosen = next(t for t in tools if t.function.name == name)
        return _parameters(chosen.function)
    if tool_choice == "required":
        return {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t.function)},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in tools
            ]
        }
    return None


def forced_calls(tool_choice: ToolChoice, text: str) -> list[ToolCall]:
    """The call in a forced call's output (well-formed by construction, unless cut short by max_tokens)."""
    if isinstance(tool_choice, NamedToolChoice):
        return [ToolCall(tool_choice.function.name, text.strip())]
    try:
        call = json.loads(text)
        return [ToolCall(str(call["name"]), json.dumps(call["arguments"]))]
    except (ValueError, KeyError, TypeError):
        return []


def parse_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Hermes-format calls in free text: (the text without them, the calls). Blocks that are not a JSON object
    with a name stay in the text."""
    calls: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        try:
            call = json.loads(match.group(1))
            calls.append(ToolCall(str(call["name"]), json.dumps(call.get("arguments", {}))))
            return ""
        except (ValueError, KeyError, TypeError):
            return match.group(0)

    content = TOOL_CALL.sub(take, text)
    return content.strip() if calls else content, calls


def may_become_call(text: str) -> bool:
    """Whether streamed text could still turn out to be a call, so it must be held back, not sent as content."""
    head = text.lstrip()
    return head.startswith(TOOL_CALL_OPEN) or TOOL_CALL_OPEN.startswith(head)
