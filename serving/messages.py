"""Chat messages as the OpenAI SDK sends them, validated strictly, and turned into chat-template messages.

``content`` is a string or a list of content parts. Text parts are joined; image, audio and file parts parse (so a
request is never rejected for its shape) but are refused with a 400 naming the part, since no model queuechat
serves accepts them. Roles: system, developer (the worker maps it to system for chat templates that predate it), user,
assistant (with ``tool_calls``) and tool (with ``tool_call_id``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker.errors import InvalidRequest

PartType = Literal["text", "image_url", "input_audio", "file", "refusal"]
# What each role may put in a content list (OpenAI's own rules: refusals only from the assistant, media only from
# the user).
ALLOWED_PARTS: dict[str, frozenset[str]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text"}),
}
MEDIA_PARTS = frozenset({"image_url", "input_audio", "file"})


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str
    format: Literal["wav", "mp3"]


class FileRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class ContentPart(BaseModel):
    """One part of a content list. One flat model rather than a tagged union, so a validation error names the part
    as ``messages[i].content[j]`` and not by pydantic's union branch."""

    model_config = ConfigDict(extra="forbid")

    type: PartType
    text: str | None = None
    refusal: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None
    file: FileRef | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> ContentPart:
        present = {n for n in ("text", "refusal", "image_url", "input_audio", "file") if getattr(self, n) is not None}
        if self.type not in present:
            raise ValueError(f"a content part of type '{self.type}' needs a '{self.type}' field")
        extra = sorted(present - {self.type})
        if extra:
            raise ValueError(f"a content part of type '{self.type}' cannot have {', '.join(extra)}")
        return self


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: str  # a JSON document as a string, as the model produced it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of ``messages``. Per-role rules are checked after parsing, so an error names the message."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # assistant only
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    # Fields the SDK echoes back when an earlier response message is sent again; only their empty values are
    # accepted, since queuechat never produces them.
    function_call: None = None
    audio: None = None
    annotations: list[Any] | None = None
    # tool only
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        role = self.role
        if role != "assistant":
            for name in ("tool_calls", "refusal", "annotations"):
                if getattr(self, name) is not None:
                    raise ValueError(f"'{name}' is only allowed in assistant messages")
        if role == "tool":
            if not self.tool_call_id:
                raise ValueError("a tool message needs 'tool_call_id'")
        elif self.tool_call_id is not None:
            raise ValueError("'tool_call_id' is only allowed in tool messages")
        if role == "assistant":
            if self.content is None and not self.tool_calls and self.refusal is None:
                raise ValueError("an assistant message needs 'content', 'tool_calls' or 'refusal'")
        elif self.content is None:
            raise ValueError(f"a {role} message needs 'content'")
        if isinstance(self.content, list):
            for part in self.content:
                if part.type not in ALLOWED_PARTS[role]:
                    raise ValueError(f"content parts of type '{part.type}' are not allowed in {role} messages")
        return self

    def text(self) -> str:
        content = self.content
        if isinstance(content, list):
            return "".join(part.text or part.refusal or "" for part in content)
        return content or ""

    def as_template_message(self) -> dict[str, Any]:
        """The message as Hugging Face chat templates expect it."""
        # developer stays developer: the worker maps it to system for a template that does not know it
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name:
            message["name"] = self.name
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _arguments(c)}}
                for c in self.tool_calls
            ]
        return message


def _arguments(call: ToolCall) -> Any:
    """Templates index into the arguments (``arguments.items()``), so a JSON object is passed parsed."""
    try:
        parsed = json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments
    return parsed if isinstance(parsed, dict) else call.function.arguments


def reject_media(messages: list[ChatMessage]) -> None:
    """400 for the first image, audio or file part: no model queuechat serves reads them, and dropping them would
    answer a question the client did not ask."""
    for i, message in enumerate(messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type in MEDIA_PARTS:
                    kind = {"image_url": "images", "input_audio": "audio", "file": "files"}[part.type]
                    raise InvalidRequest(
                        f"This model does not accept {kind}: content parts of type '{part.type}' are not supported. "
                        "Send text parts only.",
                        param=f"messages[{i}].content[{j}]",
                    )
