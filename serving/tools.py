"""Function calling: what schema a forced call must follow, and how calls are read back out of generated text.

A forced call (``tool_choice`` "required" or a named function) is generated under a JSON-schema constraint, so it
is always well-formed: a named call's output is the arguments object itself; "required" outputs
``{"name": ..., "arguments": {...}}`` for one of the tools. With "auto" the model decides, and writes its calls
in its own format, read by :mod:`serving.parsers`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.errors import InvalidRequest
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


# Keywords whose values are JSON data, not schemas: a "$ref" key in them is data and stays as it is.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with its local references (``#``, ``#/$defs/X``…) made relative to ``base``, the pointer where
    the schema now sits inside a larger one."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rebased: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            rebased[key] = base + value[1:]
        elif key in _DATA_KEYWORDS:
            rebased[key] = value
        else:
            rebased[key] = _rebased(value, base)
    return rebased


def _check_usable(tools: list[ToolDefinition], forced: list[ToolDefinition]) -> None:
    """400 naming the tool whose parameters cannot constrain a forced call. Checked here, as the worker checks
    a response_format's schema, so that the error names ``tools`` (the worker cannot tell where a schema came
    from); compiling a schema takes a fraction of a millisecond."""
    import llguidance

    for tool in forced:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(_parameters(tool.function))
            problem = llguidance.LLMatcher.validate_grammar(grammar)
        except Exception as exc:  # llguidance reports some bad schemas by raising
            problem = str(exc)
        if problem:
            index = tools.index(tool)
            raise InvalidRequest(
                f"The parameters of tool {tool.function.name!r} cannot be used for a forced call: {problem}",
                param=f"tools[{index}].function.parameters",
            )


def forced_call_schema(tools: list[ToolDefinition] | None, tool_choice: ToolChoice) -> dict[str, Any] | None:
    """The JSON schema the output must follow when the request forces a call, else None; 400 (``tools``) for
    a tool whose parameters cannot be followed."""
    tools = tools or []
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        chosen = next(t for t in tools if t.function.name == name)
        _check_usable(tools, [chosen])
        return _parameters(chosen.function)
    if tool_choice == "required":
        _check_usable(tools, tools)
        # Each tool's parameters go under the root's $defs, their local references rebased there: a reference
        # such as pydantic's "#/$defs/Guest" points into the root of the schema it appears in, which inside the
        # anyOf would no longer be the tool's parameters. Tool names are plain pointer segments (no "/" or "~").
        return {
            "$defs": {t.function.name: _rebased(_parameters(t.function), f"#/$defs/{t.function.name}") for t in tools},
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": t.function.name},
                        "arguments": {"$ref": f"#/$defs/{t.function.name}"},
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in tools
            ],
        }
    return None


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


# How the grammar writes a "required" call, compact and in the schema's property order: up to here it is
# {"name":"...","arguments":  and the arguments follow, then the closing brace.
_REQUIRED_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"arguments"\s*:\s*')
_REQUIRED_END = re.compile(r"\s*\}\s*\Z")
# What may still turn out not to be part of the arguments while they are generated: whitespace at the end, and for
# "required" a closing brace that may be the outer object's.
_NAMED_PENDING = re.compile(r"\s*\Z")
_REQUIRED_PENDING = re.compile(r"\s*\}?\s*\Z")


def _head(tool_choice: ToolChoice, text: str) -> tuple[str, int] | None:
    """(the call's name, where its arguments begin in ``text``) once the output shows both."""
    if isinstance(tool_choice, NamedToolChoice):
        return (tool_choice.function.name, len(text) - len(text.lstrip())) if text.strip() else None
    match = _REQUIRED_HEAD.match(text)
    return (match.group(1), match.end()) if match else None


def _sendable(tool_choice: ToolChoice, arguments: str) -> str:
    """The start of arguments being generated that is surely part of them."""
    pending = _NAMED_PENDING if isinstance(tool_choice, NamedToolChoice) else _REQUIRED_PENDING
    found = pending.search(arguments)
    return arguments[: found.start()] if found else arguments


def forced_calls(tool_choice: ToolChoice, text: str) -> list[ToolCall]:
    """The call in a forced call's output: well-formed by construction, unless cut short by max_tokens, when
    there is none (as OpenAI answers; the text stays content). The arguments are the generated text itself, so a
    stream's fragments add up to them."""
    head = _head(tool_choice, text)
    if isinstance(tool_choice, NamedToolChoice):
        arguments = text.strip()
        return [ToolCall(tool_choice.function.name, arguments)] if _is_object(arguments) else []
    try:
        call = json.loads(text)
        name, arguments_object = str(call["name"]), call["arguments"]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(arguments_object, dict):
        return []
    end = _REQUIRED_END.search(text)
    if head is not None and head[0] == name and end is not None:
        return [ToolCall(name, text[head[1] : end.start()])]
    return [ToolCall(name, json.dumps(arguments_object))]  # written in another order: read whole


@dataclass
class CallStream:
    """A forced call's output read as it is generated, into the pieces OpenAI streams a call in: the call's id and
    name once the output shows the name, then fragments of its arguments as they come."""

    tool_choice: ToolChoice
    text: str = ""
    call: ToolCall | None = None  # once its first piece is sent
    start: int = 0  # where the arguments begin in the text
    sent: int = 0  # characters of the arguments sent

    def _first(self, call: ToolCall) -> responses.ChatDeltaToolCall:
        function = responses.DeltaFunction(name=call.name, arguments="")
        return responses.ChatDeltaToolCall(index=0, id=call.id, type="function", function=function)

    def _fragment(self, arguments: str) -> responses.ChatDeltaToolCall:
        self.sent += len(arguments)
        return responses.ChatDeltaToolCall(index=0, function=responses.DeltaFunction(arguments=arguments))

    def feed(self, piece: str) -> list[responses.ChatDeltaToolCall]:
        """The pieces ``piece`` of output makes ready to send."""
        self.text += piece
        out = []
        if self.call is None:
            head = _head(self.tool_choice, self.text)
            if head is None:
                return []
            self.call, self.start = ToolCall(head[0], ""), head[1]
            out.append(self._first(self.call))
        fragment = _sendable(self.tool_choice, self.text[self.start :])[self.sent :]
        if fragment:
            out.append(self._fragment(fragment))
        return out

    def finish(self) -> tuple[list[responses.ChatDeltaToolCall], str | None]:
        """(the pieces still to send, the content) once the output is complete: the rest of the arguments, or, for
        output that is no call (cut short before its name), that text as content. A call cut short after its first
        pieces ends there: sent is sent, and the finish reason tells."""
        calls = forced_calls(self.tool_choice, self.text)
        if self.call is None:
            if not calls:
                return [], self.text or None
            self.call = calls[0]
            return [self._first(self.call), self._fragment(self.call.arguments)], None
        if calls and calls[0].arguments.startswith(self.text[self.start :][: self.sent]):
            self.call.arguments = calls[0].arguments
            rest = calls[0].arguments[self.sent :]
            return ([self._fragment(rest)] if rest else []), None
        return [], None

    @property
    def called(self) -> bool:
        """Whether the output was a whole call (known after :meth:`finish`)."""
        return self.call is not None and _is_object(self.call.arguments)
