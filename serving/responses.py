"""OpenAI's response objects as pydantic models: what every endpoint answers, and what ``/openapi.json`` documents.

Fields OpenAI leaves out when they do not apply (a message's ``tool_calls`` without calls, a chunk's ``usage``
before the last one, a delta's unset parts) are left out here too (``exclude_if``); every other field is always
present, ``null`` included, as OpenAI sends it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


def _absent(value: object) -> bool:
    return value is None


def Omitted() -> Any:  # reads as a field default
    """A field left out of the JSON when it is None."""
    return Field(default=None, exclude_if=_absent)


# ------------------------------------------------------------------ shared


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = Omitted()  # where the engine tells its prefix cache's share

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> CompletionUsage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=None if cached_tokens is None else PromptTokensDetails(cached_tokens=cached_tokens),
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body."""

    error: ErrorDetail


# ------------------------------------------------------------------ log-probabilities


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


# ------------------------------------------------------------------ chat


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as the model produced it


class ChatCompletionMessageToolCall(BaseModel):
    index: int | None = Omitted()  # in stream chunks only
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # a reasoning model's reasoning, apart from the answer (with the worker's --reasoning-parser): vLLM's
    # ``reasoning_content``, and ``reasoning``, the name its newer versions use, both with the same text
    reasoning_content: str | None = Omitted()
    reasoning: str | None = Omitted()
    tool_calls: list[ChatCompletionMessageToolCall] | None = Omitted()


class ChatChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None  # vLLM's: the stop string or stop token id that ended the choice


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class DeltaFunction(BaseModel):
    name: str | None = Omitted()  # in a call's first chunk only
    arguments: str


class ChatDeltaToolCall(BaseModel):
    """A piece of a streamed call, as OpenAI streams one: the first has its id, type and name with arguments "",
    the next ones (same ``index``) only fragments of the arguments."""

    index: int
    id: str | None = Omitted()
    type: Literal["function"] | None = Omitted()
    function: DeltaFunction


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = Omitted()
    content: str | None = Omitted()
    reasoning_content: str | None = Omitted()  # a piece of the reasoning, in chunks of their own
    reasoning: str | None = Omitted()
    tool_calls: list[ChatCompletionMessageToolCall | ChatDeltaToolCall] | None = Omitted()


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = Omitted()  # on the choice's last chunk


class ChatCompletionChunk(BaseModel):
    """One ``data:`` line of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    # the last chunk's, with stream_options.include_usage; every chunk's with continuous_usage_stats
    usage: CompletionUsage | None = Omitted()


# ------------------------------------------------------------------ completions


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None  # vLLM's: the stop string or stop token id that ended the choice


class Completion(BaseModel):
    """A text completion, and (with ``usage`` only on the last one) each chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = Omitted()


# ------------------------------------------------------------------ embeddings


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32 (encoding_format=base64)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ------------------------------------------------------------------ models


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int | None  # not OpenAI's: the longest context of the model's workers


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# ------------------------------------------------------------------ files and batches


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None
    expires_at: int | None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int | None
    metadata: dict[str, str] | None
    status: str
    failed_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    request_counts: BatchRequestCounts


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


# ------------------------------------------------------------------ small endpoints


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    broker: Literal["up", "down"]
    events: Literal["connected", "disconnected"]
    open_jobs: int


class Version(BaseModel):
    version: str


class TokenCheck(BaseModel):
    fits: bool
    tokenCount: int  # FastChat's names
    contextLength: int


class TokenCheckList(BaseModel):
    prompts: list[TokenCheck]
