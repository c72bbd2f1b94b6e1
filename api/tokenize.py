"""vLLM's ``POST /tokenize`` and ``POST /detokenize``: a prompt or chat turned into the model's token ids, and ids
back into text, by a worker of the model with its own tokenizer and chat template (a ``tokenize`` or
``detokenize`` job), so a client counting or building prompts sees exactly what generation will see."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.context import producer_of, request_id_of, request_log_of
from api.errors import ERROR_RESPONSES
from broker.errors import InvalidRequest
from broker.producer import Producer
from broker.schemas import Done, Job, JobKind, TokenOptions
from serving.jobs import done_of
from serving.messages import ChatMessage, reject_media
from serving.tools import ToolDefinition

router = APIRouter(responses=ERROR_RESPONSES)

# A detokenize request carries its ids inline; as many as the largest context a worker here would hold.
MAX_DETOKENIZE_IDS = 1_048_576


class _TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # vLLM serves one model and lets clients leave it out; here it may be left out when one model is served
    model: str | None = Field(default=None, min_length=1)
    return_token_strs: bool = False


class TokenizePromptRequest(_TokenizeRequest):
    prompt: str
    add_special_tokens: bool = True


class TokenizeChatRequest(_TokenizeRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1)
    tokens: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_DETOKENIZE_IDS)


class DetokenizeResponse(BaseModel):
    prompt: str


async def model_or_only(producer: Producer, model: str | None) -> str:
    """The model a request names, or the only model served when it names none (vLLM's clients send none)."""
    if model is not None:
        return model
    live = sorted(await producer.live_models())
    if len(live) != 1:
        served = ", ".join(live) or "none"
        raise InvalidRequest(f"name the model: this server serves more than one (served: {served})", param="model")
    return live[0]


async def answer_of(request: Request, job: Job) -> Done:
    """Run a job that a worker answers at admission, and return its done event."""
    done = await done_of(producer_of(request), job, request_log_of(request, job.model))
    if done is None:  # merged raises the job's error event: a job ends with one or the other
        raise RuntimeError(f"job {job.id} ended without a done event")
    return done


def job_for(request: Request, kind: JobKind, model: str, **fields: Any) -> Job:
    producer = producer_of(request)
    deadline = time.time() + producer.settings.request_timeout
    return Job(kind=kind, model=model, deadline=deadline, request_id=request_id_of(request), **fields)


@router.post("/tokenize")
async def tokenize(body: TokenizePromptRequest | TokenizeChatRequest, request: Request) -> TokenizeResponse:
    """The token ids of ``prompt`` (with the tokenizer's special tokens unless ``add_special_tokens`` is false),
    or of ``messages`` (and ``tools``) through the model's chat template."""
    producer = producer_of(request)
    model = await model_or_only(producer, body.model)
    options = TokenOptions(token_strs=body.return_token_strs)
    if isinstance(body, TokenizeChatRequest):
        reject_media(body.messages)
        options.add_generation_prompt = body.add_generation_prompt
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        messages = [m.as_template_message() for m in body.messages]
        job = job_for(request, JobKind.TOKENIZE, model, messages=messages, tools=tools, token_options=options)
    else:
        options.add_special_tokens = body.add_special_tokens
        job = job_for(request, JobKind.TOKENIZE, model, prompt=body.prompt, token_options=options)
    done = await answer_of(request, job)
    live = await producer.live_models()
    context = max((w.card.max_model_len or 0 for w in live.get(model, [])), default=0)
    tokens = done.token_ids or []
    return TokenizeResponse(count=len(tokens), max_model_len=context, tokens=tokens, token_strs=done.token_strs)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """The text of ``tokens`` as the model's tokenizer writes it (special tokens included)."""
    model = await model_or_only(producer_of(request), body.model)
    done = await answer_of(request, job_for(request, JobKind.DETOKENIZE, model, prompt=body.tokens))
    return DetokenizeResponse(prompt=done.text or "")
