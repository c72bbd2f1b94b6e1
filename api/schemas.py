"""Moved to :mod:`serving.requests` (and the tool definitions to :mod:`serving.tools`); kept so that code written
against the earlier layout still imports. New code imports from :mod:`serving`."""

from serving.requests import (
    MAX_COMPLETION_LOGPROBS,
    MAX_N,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    CompletionRequest,
    JsonSchemaFormat,
    ResponseFormat,
    StreamOptions,
)
from serving.tools import FunctionDefinition, NamedFunction, NamedToolChoice, ToolDefinition

__all__ = [
    "MAX_COMPLETION_LOGPROBS",
    "MAX_N",
    "MAX_STOP_SEQUENCES",
    "MAX_TOP_LOGPROBS",
    "ChatCompletionRequest",
    "CompletionRequest",
    "FunctionDefinition",
    "JsonSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "StreamOptions",
    "ToolDefinition",
]
