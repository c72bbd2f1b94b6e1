"""``POST /v1/chat/completions``, streamed (SSE) or not: the route around :mod:`serving.chat`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.context import observer_of, producer_of, request_id_of
from api.errors import STREAM_RESPONSES
from api.streaming import stream_response
from serving.chat import chat_answer, open_chat_stream
from serving.requests import ChatCompletionRequest
from serving.responses import ChatCompletion

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    producer, observer, request_id = producer_of(request), observer_of(request, body.model), request_id_of(request)
    if not body.stream:
        return await chat_answer(producer, body, observer, request_id=request_id)
    stream = await open_chat_stream(producer, body, observer, request_id=request_id)
    return stream_response(stream.lines(), producer)
