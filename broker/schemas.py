"""The wire protocol: jobs on the streams and events on the channels, as pydantic models serialised to JSON.

Payloads are JSON, never pickle, so write access to Redis never becomes code execution in a worker.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from broker import tracing
from broker.errors import JobFailed, QueuechatError
from broker.keys import new_job_id


class JobKind(StrEnum):
    """What a job asks for. Generation kinds run in the engine; the others are answered when the worker admits
    them, with ``accepted`` then one ``done`` (see :class:`Done`), and never reach the engine.

    - ``chat``, ``completion``: generation; ``accepted``, ``delta``s, one ``done`` per choice.
    - ``tokenize``: count the tokens of ``prompt`` (a string or token ids) or ``messages`` with the model's
      tokenizer and chat template; the count is ``accepted.prompt_tokens`` (and ``done.usage.prompt_tokens``).
      With ``token_options`` the ids themselves (and their token strings, if asked) come in ``done.token_ids``.
    - ``detokenize``: the text of the token ids in ``prompt``, in ``done.text``.
    - ``embedding``: embed every item of ``inputs`` in one job (not one job per item); the vectors come in
      ``done.embeddings``. Only embeddings workers serve it; a generation worker answers it with a 400 error event.
    """

    CHAT = "chat"
    COMPLETION = "completion"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    EMBEDDING = "embedding"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"


class SamplingParams(BaseModel):
    """What the engine needs to know to generate; validated by the front server, trusted by the worker."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    # None: the model's own default (its generation_config), else OpenAI's (temperature 1, top_p 1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0)  # alternatives reported per token, with ``logprobs``
    prompt_logprobs: bool = False  # report the prompt's tokens and their logprobs too (completions' echo)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    json_schema: dict[str, Any] | None = None  # the output must be JSON that follows this schema
    regex: str | None = None  # or match this regular expression (vLLM's guided_regex)
    choice: list[str] | None = None  # or be one of these strings (vLLM's guided_choice)
    # vLLM's extras
    ignore_eos: bool = False  # generate past the model's end-of-sequence tokens (stop strings and ids still end)
    min_tokens: int = Field(default=0, ge=0)  # no end (EOS, stop token id, stop string) before this many tokens
    include_stop_str_in_output: bool = False  # a matched stop string stays at the end of the text
    allowed_token_ids: list[int] | None = None  # the only tokens that may be generated
    logit_bias: dict[int, float] | None = None  # added to the token's logit before sampling (OpenAI's)

    @property
    def constrained(self) -> bool:
        """Whether a grammar constrains the output (a continuation needs an engine that starts the grammar past
        the tokens already sent)."""
        return self.json_schema is not None or self.regex is not None or self.choice is not None


class TokenOptions(BaseModel):
    """How a ``tokenize`` job that wants the ids themselves tokenizes (vLLM's ``/tokenize`` options)."""

    model_config = ConfigDict(extra="forbid")

    add_special_tokens: bool = True  # a prompt's BOS and the like; a chat template writes its own
    add_generation_prompt: bool = True  # messages end with the assistant's turn opened
    token_strs: bool = False  # also each id's token string


class ChatOptions(BaseModel):
    """How a chat job's messages become its prompt, beyond the defaults (vLLM's chat extras)."""

    model_config = ConfigDict(extra="forbid")

    add_generation_prompt: bool = True  # end with the assistant's turn opened
    continue_final_message: bool = False  # leave the last (assistant) message open, for the model to go on with it
    template_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra variables for the chat template


class Job(BaseModel):
    """One generation request, as it travels on ``{prefix}:jobs:{model}``."""

    model_config = ConfigDict(extra="forbid")

    # made from the model (see broker.keys.new_job_id): the id says which cluster slot holds the job's keys
    id: str = ""
    kind: JobKind
    model: str
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # for the chat template
    prompt: str | list[int] | None = None
    params: SamplingParams = Field(default_factory=SamplingParams)
    inputs: list[str] | list[list[int]] | None = None  # embedding jobs: texts or token id lists
    dimensions: int | None = None  # embedding jobs: the size the client asked for, checked by the worker
    token_options: TokenOptions | None = None  # tokenize jobs that want the ids, not only their count
    chat_options: ChatOptions | None = None  # chat jobs: how the template renders the messages
    created: float = Field(default_factory=time.time)
    deadline: float
    attempt: int = 1
    # lower first within its tenant (vLLM's ``priority``): it picks the stream the job is queued on (see
    # broker/fairness.py), so it travels in the stream's name, never in the job
    priority: int = Field(default=0, exclude=True)
    # the client's X-Request-Id (or the one the API made), so a worker's log line names the request it served
    request_id: str | None = Field(default=None, max_length=128)
    # the W3C trace context of the span the job was made in (the front server's request), so the worker's spans
    # join the request's trace; None with tracing off (see broker/tracing.py)
    trace_context: dict[str, str] | None = Field(default_factory=tracing.current_context)

    @model_validator(mode="before")
    @classmethod
    def _id_of_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("id") and isinstance(data.get("model"), str):
            return {**data, "id": new_job_id(data["model"])}
        return data


class EventType(StrEnum):
    ACCEPTED = "accepted"
    DELTA = "delta"
    DONE = "done"
    ERROR = "error"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # of the prompt, found in the engine's prefix cache (where it tells)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """One token with its log-probability under the model's raw distribution and the likeliest alternatives.
    ``logprob`` is None only for a prompt's first token, which nothing predicts."""

    token: str
    logprob: float | None = None  # events are sent without None fields
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class _Event(BaseModel):
    seq: int


class Accepted(_Event):
    type: Literal[EventType.ACCEPTED] = EventType.ACCEPTED
    worker: str
    attempt: int
    prompt_tokens: int
    prompt_logprobs: list[TokenLogprob] | None = None  # with ``params.prompt_logprobs``
    # chat jobs: how the worker's model writes reasoning and tool calls (its --reasoning-parser and
    # --tool-call-parser; None: no reasoning, Hermes calls), and whether the prompt ended inside a reasoning block
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    reasoning_open: bool = False


class Delta(_Event):
    """New output of one choice. Under load a delta carries all the tokens of several engine steps."""

    type: Literal[EventType.DELTA] = EventType.DELTA
    index: int = 0
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None  # one per token id, with ``params.logprobs``


class Done(_Event):
    type: Literal[EventType.DONE] = EventType.DONE
    index: int = 0
    finish_reason: FinishReason
    usage: Usage
    # what ended a choice that stopped: the stop string or stop token id; None at EOS or length (vLLM's)
    stop_reason: str | int | None = None
    # embedding jobs only: one vector per input, in input order, each base64 of little-endian float32 (OpenAI's
    # ``encoding_format=base64``): a third of the size of JSON floats, and exact
    embeddings: list[str] | None = None
    # tokenize jobs with ``token_options``: the prompt's ids, and their token strings if asked
    token_ids: list[int] | None = None
    token_strs: list[str] | None = None
    text: str | None = None  # detokenize jobs: the text of the ids


class Error(_Event):
    """A job failed. ``status`` is the HTTP status the front server answers with, ``code`` OpenAI's error code."""

    type: Literal[EventType.ERROR] = EventType.ERROR
    code: str
    message: str
    status: int = 500
    param: str | None = None


def error_event(exc: QueuechatError, seq: int) -> Error:
    """The ``error`` event a worker sends for ``exc``: its status, code and param, as the client will get them."""
    return Error(seq=seq, code=exc.code, message=exc.message, status=exc.status, param=exc.param)


def job_failure(event: Error) -> JobFailed:
    """What a front server raises for an ``error`` event: the inverse of :func:`error_event`."""
    return JobFailed(event.message, status=event.status, code=event.code, param=event.param)


AnyEvent = Accepted | Delta | Done | Error
Event = Annotated[AnyEvent, Field(discriminator="type")]
event_adapter: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def parse_event(raw: bytes | str) -> AnyEvent:
    return event_adapter.validate_json(raw)
