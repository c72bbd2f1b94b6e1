"""Small endpoints: one model by id, the server's version, and FastChat's ``/api/v1/token_check``."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.context import producer_of, request_id_of, request_log_of
from api.errors import ERROR_RESPONSES
from broker.errors import ModelNotFound
from broker.schemas import Accepted, Job, JobKind
from serving.jobs import close_all, merged, submit_all
from serving.models import model_list
from serving.responses import Model, TokenCheck, TokenCheckList, Version

router = APIRouter(responses=ERROR_RESPONSES)

MAX_TOKEN_CHECKS = 256


def package_version() -> str:
    try:
        return version("queuechat")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Model:
    for entry in (await model_list(producer_of(request))).data:
        if entry.id == model_id:
            return entry
    raise ModelNotFound(f"The model '{model_id}' does not exist or has no live worker.", param="model")


@router.get("/version")
async def server_version() -> Version:
    return Version(version=package_version())


class TokenCheckItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    prompt: str
    max_tokens: int = Field(ge=0)


class TokenCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[TokenCheckItem] = Field(min_length=1, max_length=MAX_TOKEN_CHECKS)


@router.post("/api/v1/token_check")
async def token_check(body: TokenCheckRequest, request: Request) -> TokenCheckList:
    """FastChat's check, for clients migrating from it: does each prompt plus its max_tokens fit the model?
    Each prompt is counted by a worker of its model (a ``tokenize`` job), with the model's own tokenizer."""
    producer = producer_of(request)
    deadline = time.time() + producer.settings.request_timeout
    request_id = request_id_of(request)
    jobs = [
        Job(kind=JobKind.TOKENIZE, model=p.model, prompt=p.prompt, deadline=deadline, request_id=request_id)
        for p in body.prompts
    ]
    streams = await submit_all(producer, jobs, request_log_of(request, body.prompts[0].model))
    try:
        async for _ in merged(streams):  # the rest of each job: its done event
            pass
    finally:
        close_all(streams)
    live = await producer.live_models()
    answers = []
    for item, events in zip(body.prompts, streams, strict=True):
        first = events.pending_first
        count = first.prompt_tokens if isinstance(first, Accepted) else 0
        context = max((w.card.max_model_len or 0 for w in live.get(item.model, [])), default=0)
        answers.append(TokenCheck(fits=count + item.max_tokens <= context, tokenCount=count, contextLength=context))
    return TokenCheckList(prompts=answers)
