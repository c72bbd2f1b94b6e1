"""Responses request bodies, validated strictly: a parameter queuechat cannot honour is a 400 naming it.

Input items, content parts, tools and tool choices are flat models (not tagged unions) so that an error names the
item as ``input[i]`` or ``input[i].content[j]``; item, part and tool types queuechat has no use for parse but are
refused by name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MAX_METADATA_KEYS = 16  # OpenAI's limits on metadata
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

TEXT_PARTS = frozenset({"input_text", "output_text", "refusal", "reasoning_text"})
MEDIA_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
# What each role may put in a content list (OpenAI's own rules: output text and refusals only from the assistant)
ROLE_PARTS = {
    "assistant": frozenset({"output_text", "refusal"}),
    "user": frozenset({"input_text", *MEDIA_PARTS}),
    "system": frozenset({"input_text"}),
    "developer": frozenset({"input_text"}),
}
# Input item types queuechat reads; the others (hosted tools' calls, item references) are refused. Reasoning
# items (a reasoning model's, sent back with the turn they came in) are kept and left out of the prompt, as chat
# templates leave out the reasoning of earlier turns.
ITEM_FIELDS: dict[str, frozenset[str]] = {
    "reasoning": frozenset({"id", "summary", "content", "encrypted_content", "status"}),
    "message": frozenset({"role", "content", "id", "status", "phase"}),
    "function_call": frozenset({"call_id", "name", "arguments", "id", "status"}),
    "function_call_output": frozenset({"call_id", "output", "id", "status"}),
}
ITEM_REQUIRED: dict[str, tuple[str, ...]] = {
    "reasoning": ("summary",),
    "message": ("role", "content"),
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
}
# Known parameters that are refused unless left out (or sent as null): why, in the 400's message.
REFUSED: dict[str, str] = {
    "reasoning": "no model served here has a reasoning effort or summary to set",
    "conversation": "conversations are not stored here; use previous_response_id",
    "prompt": "there are no stored prompt templates here",
    "max_tool_calls": "hosted tools are not run here",
    "top_logprobs": "logprobs are not returned in Responses",
    "context_management": "context compaction is not done here",
    "prompt_cache_retention": "the prefix cache is the worker's own and has no retention to set",
    "prompt_cache_options": "the prefix cache is the worker's own and has no options",
    "background_options": "background runs have no options here",
    "moderation": "no moderation is run here",
    "image": "no model served here generates images",
    "access_programs": "there are no access programs here",
}


class ContentPart(BaseModel):
    """One part of a message's content list."""

    model_config = ConfigDict(extra="allow")  # media parts' own fields are not modelled: they are refused

    type: str
    text: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ContentPart:
        if self.type in MEDIA_PARTS:
            raise ValueError(
                f"'{self.type}' content is not supported: no model queuechat serves reads {MEDIA_PARTS[self.type]}"
            )
        if self.type not in TEXT_PARTS:
            raise ValueError(f"unknown content part type '{self.type}'")
        extra = sorted(set(self.model_extra or {}))
        if self.type != "output_text":
            extra += [n for n in ("annotations", "logprobs") if getattr(self, n) is not None]
        extra += [n for n in ("text", "refusal") if getattr(self, n) is not None and n != self._payload()]
        if extra:
            raise ValueError(f"a '{self.type}' part cannot have {', '.join(sorted(extra))}")
        if getattr(self, self._payload()) is None:
            raise ValueError(f"a '{self.type}' part needs '{self._payload()}'")
        return self

    def _payload(self) -> str:
        return "refusal" if self.type == "refusal" else "text"

    def value(self) -> str:
        return (self.refusal if self.type == "refusal" else self.text) or ""


class InputItem(BaseModel):
    """One item of ``input``: a message (``type`` may be left out), a function call or a function call's output."""

    model_config = ConfigDict(extra="allow")  # other item types' fields are not modelled: they are refused

    type: str = "message"
    id: str | None = Field(default=None, min_length=1)
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    # message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    phase: Literal["commentary", "final_answer"] | None = None
    # function_call and function_call_output
    call_id: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)
    arguments: str | None = None
    output: str | list[ContentPart] | None = None

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> InputItem:
        if self.type not in ITEM_FIELDS:
            raise ValueError(
                f"input items of type '{self.type}' are not supported: queuechat reads messages, function_call "
                "and function_call_output items"
            )
        fields = ("role", "content", "phase", "call_id", "name", "arguments", "output")
        present = {n for n in fields if getattr(self, n) is not None}
        present |= set(self.model_extra or {})
        extra = sorted(present - ITEM_FIELDS[self.type])
        if extra:
            raise ValueError(f"a '{self.type}' item cannot have {', '.join(extra)}")
        missing = [n for n in ITEM_REQUIRED[self.type] if getattr(self, n, None) is None]
        if missing:
            raise ValueError(f"a '{self.type}' item needs {', '.join(missing)}")
        if self.role is not None and isinstance(self.content, list):
            for part in self.content:
                if part.type in ROLE_PARTS[self.role] or part.type in MEDIA_PARTS:
                    continue
                raise ValueError(f"content parts of type '{part.type}' are not allowed in {self.role} messages")
        if isinstance(self.output, list):
            for part in self.output:
                if part.type != "input_text":
                    raise ValueError(f"a function call's output cannot hold '{part.type}' parts")
        return self

    def text(self) -> str:
        value = self.content if self.type == "message" else self.output
        if isinstance(value, list):
            return "".join(part.value() for part in value)
        return value or ""


class Tool(BaseModel):
    """A function tool; hosted tools (web search, file search, code interpreter, ...) are refused by name."""

    model_config = ConfigDict(extra="allow")

    type: str
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _a_function(self) -> Tool:
        if self.type != "function":
            raise ValueError(f"tools of type '{self.type}' are not supported: queuechat runs function tools only")
        extra = sorted(k for k, v in (self.model_extra or {}).items() if v not in (None, False))
        if extra:
            raise ValueError(f"a function tool cannot have {', '.join(extra)} here")
        if self.name is None:
            raise ValueError("a function tool needs a name")
        return self


class ToolChoiceObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    name: str | None = None

    @model_validator(mode="after")
    def _a_function(self) -> ToolChoiceObject:
        if self.type != "function":
            raise ValueError(f"tool_choice of type '{self.type}' is not supported: name a function, or use a mode")
        if self.model_extra:
            raise ValueError(f"a function tool_choice cannot have {', '.join(sorted(self.model_extra))}")
        if not self.name:
            raise ValueError("a function tool_choice needs a name")
        return self


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> TextFormat:
        if self.type == "json_schema":
            if self.name is None or self.schema_ is None:
                raise ValueError("a 'json_schema' format needs name and schema")
        elif any(v is not None for v in (self.name, self.schema_, self.description, self.strict)):
            raise ValueError(f"a '{self.type}' format cannot have name, schema, description or strict")
        return self

    def output_schema(self) -> dict[str, Any] | None:
        if self.type == "json_object":
            return {"type": "object"}
        return self.schema_


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = Field(
        default=None, description="only 'medium': no model served here has a verbosity to set"
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: Literal[False] | None = Field(default=None, description="events are not padded here")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # accepted: every prompt's prefix is cached by itself
    store: bool | None = None  # null or left out: true, as OpenAI
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    background: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    include: list[str] | None = None
    truncation: Literal["disabled"] | None = Field(
        default=None, description="only 'disabled': a prompt over the context is a 400, never cut"
    )
    service_tier: Literal["auto", "default"] | None = None
    # Refused unless null (see REFUSED)
    reasoning: Any = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: Any = None
    top_logprobs: Any = None
    context_management: Any = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None
    background_options: Any = None
    moderation: Any = None
    image: Any = None
    access_programs: Any = None

    @field_validator(*REFUSED)
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(f"{info.field_name} is not supported: {REFUSED[str(info.field_name)]}")
        return value

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: str | list[InputItem]) -> str | list[InputItem]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys are allowed")
        for key, text in value.items():
            if len(key) > MAX_METADATA_KEY or len(text) > MAX_METADATA_VALUE:
                raise ValueError(
                    f"metadata keys are at most {MAX_METADATA_KEY} and values {MAX_METADATA_VALUE} characters"
                )
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_among_tools(cls, value: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if value is not None and value != "none" and value != "auto" and not tools:
            raise ValueError("tool_choice requires tools")
        if isinstance(value, ToolChoiceObject) and value.name not in {t.name for t in tools or []}:
            raise ValueError(f"tool_choice names {value.name!r}, which is not among the tools")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @field_validator("background")
    @classmethod
    def _background_needs_store(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("store") is False:
            raise ValueError("background responses must be stored: store cannot be false with background")
        return value

    @field_validator("include")
    @classmethod
    def _nothing_to_include(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError(
                f"include {value[0]!r} is not supported: there are no logprobs, hosted tool results or encrypted "
                "reasoning to include"
            )
        return value

    @property
    def stored(self) -> bool:
        return self.store is not False

    def forced_tools(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, ToolChoiceObject)
