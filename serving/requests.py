"""OpenAI request bodies, validated strictly (a parameter queuechat cannot honour is a 400 naming it), and the
broker jobs they become: :meth:`ChatCompletionRequest.to_job`, :meth:`CompletionRequest.to_jobs`."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from broker.fairness import MAX_PRIORITY, MIN_PRIORITY
from broker.schemas import ChatOptions, Job, JobKind, SamplingParams
from serving.messages import ChatMessage, reject_media
from serving.tools import NamedToolChoice, ToolChoice, ToolDefinition, forced_call_schema
from serving.wellformed import check_wellformed

MAX_STOP_SEQUENCES = 4
MAX_N = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's limits
MAX_COMPLETION_LOGPROBS = 5
LOGIT_BIAS_RANGE = 100.0  # OpenAI's: -100 bans a token, +100 all but forces it
# apply_chat_template's own arguments, which chat_template_kwargs must not override
RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
     "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
     "return_assistant_tokens_mask", "tokenizer_kwargs"}
)  # fmt: skip
# What /v1/completions generates without max_tokens: OpenAI's legacy endpoint and vLLM default to 16. (A chat
# completion without one may fill the rest of the context, as in vLLM; a worker's QUEUECHAT_MAX_TOKENS_CAP bounds
# that.)
DEFAULT_COMPLETION_MAX_TOKENS = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)  # a 64-bit signed integer, as in vLLM
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)  # Hugging Face's, as vLLM accepts it
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id (a JSON key) -> bias in [-100, 100]
    # vLLM's extras, as its benchmark clients (guidellm, aiperf) send them
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    # constrained output, as vLLM takes it: its older guided_* parameters, or structured_outputs
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = Field(default=None, min_length=1)
    guided_choice: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    structured_outputs: StructuredOutputs | None = None
    # vLLM's: lower is served earlier, among the jobs of the same key (see broker/fairness.py); an integer only
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _wellformed(cls, value: Any, info: ValidationInfo) -> Any:
        # every parameter, before anything else reads it: a lone surrogate or a 300-deep schema is a 400 naming it
        check_wellformed(value, info.field_name or "body")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias_by_token_id(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids (non-negative integers), not {key!r}")
            if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
                raise ValueError(f"the bias of token {key} is {bias}: it must be between -100 and 100")
        return value

    @field_validator("min_tokens")
    @classmethod
    def _min_within_max(cls, value: int, info: ValidationInfo) -> int:
        most = info.data.get("max_tokens")
        if most is not None and value > most:
            raise ValueError(f"min_tokens ({value}) must be at most max_tokens ({most})")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Request:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @model_validator(mode="after")
    def _one_constraint(self) -> _Request:
        given = [name for name in GUIDED if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"{given[0]} and {given[1]} cannot be combined: the output follows one constraint")
        return self

    def guided(self) -> tuple[dict[str, Any] | None, str | None, list[str] | None]:
        """(JSON schema, regex, choices) the output must follow, from the guided_* or structured_outputs."""
        outputs = self.structured_outputs
        if outputs is not None:
            schema = {"type": "object"} if outputs.json_object else outputs.json_
            return schema, outputs.regex, outputs.choice
        return self.guided_json, self.guided_regex, self.guided_choice

    def top_k_or_none(self) -> int | None:
        return None if self.top_k in (None, -1, 0) else self.top_k

    def _common_params(self) -> dict[str, Any]:
        """The sampling parameters chat and completions share, as :class:`SamplingParams` fields."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k_or_none(),
            "stop": self.stop or [],  # normalised to a list by the validator
            "stop_token_ids": self.stop_token_ids or [],
            "seed": self.seed,
            "n": self.n,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "logit_bias": {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "include_stop_str_in_output": self.include_stop_str_in_output,
            "allowed_token_ids": self.allowed_token_ids,
        }


GUIDED = ("guided_json", "guided_regex", "guided_choice", "structured_outputs")


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: exactly one of its constraints (grammars and structural tags are not taken)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_: dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, min_length=1)
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    json_object: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [n for n in ("json_", "regex", "choice") if getattr(self, n) is not None] + (
            ["json_object"] if self.json_object else []
        )
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice and json_object")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: the usage so far on every chunk


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema' and allowed only there")
        return self

    def output_schema(self) -> dict[str, Any] | None:
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_
        return None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None
    # vLLM's chat extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False  # the answer begins with the last message's content when that is the assistant's
    chat_template_kwargs: dict[str, Any] | None = None

    # Field validators (not a model validator) so that a 400 names the parameter at fault.
    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_among_tools(cls, value: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if value is not None and value != "none" and not tools:
            raise ValueError("tool_choice requires tools")
        if isinstance(value, NamedToolChoice) and value.function.name not in {t.function.name for t in tools or []}:
            raise ValueError(f"tool_choice names {value.function.name!r}, which is not among the tools")
        response_format = info.data.get("response_format")
        forced = value == "required" or isinstance(value, NamedToolChoice)
        if forced and response_format is not None and response_format.type != "text":
            raise ValueError("a forced tool call and a response_format cannot be combined")
        return value

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs_not_reserved(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        clash = sorted(set(value or {}) & RESERVED_TEMPLATE_KWARGS)
        if clash:
            raise ValueError(f"{clash[0]!r} is an argument of the template call itself, not a template variable")
        return value

    @field_validator("continue_final_message")
    @classmethod
    def _continuation_is_open(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            if info.data.get("add_generation_prompt", True):
                raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
            messages = info.data.get("messages") or []
            if messages and messages[-1].role != "assistant":
                raise ValueError("continue_final_message needs the last message to be the assistant's")
        return value

    @model_validator(mode="after")
    def _guided_alone(self) -> ChatCompletionRequest:
        given = next((name for name in GUIDED if getattr(self, name) is not None), None)
        if given is not None and self.response_format is not None and self.response_format.type != "text":
            raise ValueError(f"{given} and a response_format cannot be combined")
        if given is not None and self.forced_tools():
            raise ValueError(f"a forced tool call and {given} cannot be combined")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def echoed(self) -> str:
        """What ``echo`` puts before the answer: the last message's text, when it is the assistant's."""
        last = self.messages[-1]
        if not self.echo or last.role != "assistant":
            return ""
        return str(last.as_template_message().get("content") or "")

    def chat_options(self) -> ChatOptions | None:
        if self.add_generation_prompt and not self.continue_final_message and not self.chat_template_kwargs:
            return None
        return ChatOptions(
            add_generation_prompt=self.add_generation_prompt,
            continue_final_message=self.continue_final_message,
            template_kwargs=self.chat_template_kwargs or {},
        )

    def sampling_params(self) -> SamplingParams:
        schema = forced_call_schema(self.tools, self.tool_choice) or (
            self.response_format.output_schema() if self.response_format else None
        )
        guided_schema, regex, choice = self.guided()
        return SamplingParams(
            max_tokens=self.max_new_tokens(),
            json_schema=schema if schema is not None else guided_schema,
            regex=regex,
            choice=choice,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            **self._common_params(),
        )

    def to_job(self, timeout: float, *, request_id: str | None = None) -> Job:
        """The one job this request becomes; 400 for a media part no served model reads."""
        reject_media(self.messages)
        return Job(
            kind=JobKind.CHAT,
            model=self.model,
            messages=[m.as_template_message() for m in self.messages],
            tools=[t.model_dump(exclude_none=True) for t in self.tools]
            if self.tools_offered() and self.tools
            else None,
            params=self.sampling_params(),
            chat_options=self.chat_options(),
            deadline=time.time() + timeout,
            request_id=request_id,
            priority=self.priority,
        )

    def forced_tools(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)

    def tools_offered(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    suffix: str | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported: queuechat serves no fill-in-the-middle models")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_covers_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            if value < info.data.get("n", 1):
                raise ValueError("best_of must be greater than or equal to n")
            if info.data.get("stream") and value > info.data.get("n", 1):
                raise ValueError("best_of cannot be used with stream (the best choices are known only at the end)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("a token-id prompt must not be empty")
        return value

    def sampling_params(self) -> SamplingParams:
        # best_of: generate that many, answer with the n of highest cumulative logprob (so logprobs are needed)
        schema, regex, choice = self.guided()
        return SamplingParams(
            json_schema=schema,
            regex=regex,
            choice=choice,
            max_tokens=DEFAULT_COMPLETION_MAX_TOKENS if self.max_tokens is None else self.max_tokens,
            logprobs=self.logprobs is not None or (self.best_of or self.n) > self.n,
            top_logprobs=self.logprobs or 0,
            prompt_logprobs=self.echo and self.logprobs is not None,
            **{**self._common_params(), "n": self.best_of or self.n},
        )

    @property
    def per_prompt(self) -> int:
        """Choices generated for each prompt (``best_of`` of them when given, else ``n``)."""
        return self.best_of or self.n

    def to_jobs(self, timeout: float, *, request_id: str | None = None) -> list[Job]:
        """One job per prompt, all with the same parameters and deadline."""
        params = self.sampling_params()
        deadline = time.time() + timeout
        return [
            Job(
                kind=JobKind.COMPLETION,
                model=self.model,
                prompt=p,
                params=params,
                deadline=deadline,
                request_id=request_id,
                priority=self.priority,
            )
            for p in self.prompts()
        ]

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, one per job: a string, a list of strings, token ids or lists of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


_Request.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
