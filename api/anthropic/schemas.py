"""Anthropic Messages request bodies, validated strictly: a parameter queuechat cannot honour is a 400 naming it.

Content blocks are one flat model (not a tagged union) so that an error names the block as
``messages[i].content[j]``; image and document blocks parse but are refused by name, since no model queuechat
serves reads them. Thinking blocks (a reasoning model's, sent back with the turn they came in) are accepted and
left out of the prompt, as chat templates leave out the reasoning of earlier turns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.requests import MAX_STOP_SEQUENCES

BlockType = Literal[
    "text", "tool_use", "tool_result", "image", "document", "thinking", "redacted_thinking", "search_result"
]
UNSUPPORTED_BLOCKS = frozenset({"image", "document", "search_result"})
# Fields of each supported block besides ``type`` (and ``cache_control``, accepted everywhere: queuechat caches
# every prompt's prefix by itself, so the hint is honoured without being needed).
BLOCK_FIELDS: dict[str, frozenset[str]] = {
    "text": frozenset({"text"}),
    "tool_use": frozenset({"id", "name", "input"}),
    "tool_result": frozenset({"tool_use_id", "content", "is_error"}),
    "thinking": frozenset({"thinking", "signature"}),
    "redacted_thinking": frozenset({"data"}),
}


class CacheControl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ContentBlock(BaseModel):
    model_config = ConfigDict(extra="allow")  # media blocks' own fields are not modelled: they are refused

    type: BlockType
    cache_control: CacheControl | None = None
    text: str | None = None
    # tool_use
    id: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = Field(default=None, min_length=1)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ContentBlock:
        if self.type in UNSUPPORTED_BLOCKS:
            raise ValueError(f"'{self.type}' content blocks are not supported: no model queuechat serves reads them")
        allowed = BLOCK_FIELDS[self.type]
        present = {
            n
            for n in ("text", "id", "name", "input", "tool_use_id", "content", "is_error")
            if getattr(self, n) is not None
        } | set(self.model_extra or {})
        extra = sorted(present - allowed)
        if extra:
            raise ValueError(f"a '{self.type}' block cannot have {', '.join(extra)}")
        required = {"text": ("text",), "tool_use": ("id", "name", "input"), "tool_result": ("tool_use_id",),
                    "thinking": ("thinking",), "redacted_thinking": ("data",)}  # fmt: skip
        missing = [n for n in required[self.type] if getattr(self, n, None) is None]
        if missing:
            raise ValueError(f"a '{self.type}' block needs {', '.join(missing)}")
        return self

    def result_text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.text for block in self.content or [])


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @model_validator(mode="after")
    def _blocks_of_its_role(self) -> Message:
        if isinstance(self.content, list):
            kinds = {block.type for block in self.content}
            if self.role == "user" and "tool_use" in kinds:
                raise ValueError("tool_use blocks belong in assistant messages")
            if self.role == "assistant" and "tool_result" in kinds:
                raise ValueError("tool_result blocks belong in user messages")
        return self


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_with_tool(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("name is required with type 'tool' and allowed only there")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: OutputFormat | None = None
    effort: None = Field(default=None, description="refused: no model served here has a reasoning effort to set")


class ThinkingConfig(BaseModel):
    """Only ``disabled`` is accepted: no model queuechat serves has extended thinking."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["disabled"]


class _Conversation(BaseModel):
    """What a Messages request and a count_tokens request share."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_among_tools(cls, value: ToolChoice | None, info: Any) -> ToolChoice | None:
        tools = info.data.get("tools") or []
        if value is not None and value.type in ("any", "tool") and not tools:
            raise ValueError(f"tool_choice '{value.type}' requires tools")
        if value is not None and value.type == "tool" and value.name not in {t.name for t in tools}:
            raise ValueError(f"tool_choice names {value.name!r}, which is not among the tools")
        return value

    def system_text(self) -> str | None:
        if self.system is None:
            return None
        return self.system if isinstance(self.system, str) else "".join(block.text for block in self.system)


class MessagesRequest(_Conversation):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    # Sampling: the current SDK no longer offers these, earlier ones and other clients send them (extra_body).
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    # Accepted because they hold here as asked: every prompt's prefix is cached by itself, there is one service
    # tier and one speed.
    cache_control: CacheControl | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    speed: Literal["standard"] | None = None
    thinking: ThinkingConfig | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
        return value or None


class CountTokensRequest(_Conversation):
    pass
