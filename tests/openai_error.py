"""OpenAI's error body, exactly: every field present, of its type, nothing else."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    error: ErrorDetail


def openai_error(body: object) -> ErrorDetail:
    """The error of a response body; raises pydantic's ValidationError when it is not OpenAI-shaped."""
    detail = OpenAIError.model_validate(body).error
    assert detail.message, "an error message must say something"
    return detail
