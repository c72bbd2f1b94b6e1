"""``POST /v1/chat/completions``, streamed (SSE) or not: the route around :mod:`serving.chat`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from api.context import observer_of, producer_of, request_id_of, resume_record
from api.disconnect import unless_client_leaves
from api.errors import ERROR_RESPONSES, STREAM_RESPONSES
from api.streaming import sse_events, stream_response
from serving import chat as serving_chat
from serving.chat import open_chat_stream
from serving.requests import ChatCompletionRequest
from serving.responses import ChatCompletion

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    # A client that hangs up before its answer (or its stream's first event) is ready has its job cancelled.
    return await unless_client_leaves(request, _chat_completions(body, request))


async def _chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    producer, observer, request_id = producer_of(request), observer_of(request, body.model), request_id_of(request)
    if not body.stream:
        return await serving_chat.chat_answer(producer, body, observer, request_id=request_id)
    created = int(time.time())
    resume = resume_record(request, body, created)  # so the client can resume the stream (api/resume.py)
    stream = await open_chat_stream(producer, body, observer, request_id=request_id, resume=resume, created=created)
    return stream_response(sse_events(stream.streams, stream.lines()), producer)
