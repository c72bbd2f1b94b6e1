"""``POST /v1/completions``, streamed (SSE) or not: the route around :mod:`serving.completions`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from api.context import completion_resume_record, observer_of, producer_of, request_id_of
from api.disconnect import unless_client_leaves
from api.errors import ERROR_RESPONSES, STREAM_RESPONSES
from api.streaming import sse_events, stream_response
from serving.completions import completion_answer, open_completion_stream
from serving.requests import CompletionRequest
from serving.responses import Completion

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/v1/completions", response_model=Completion, responses=STREAM_RESPONSES)
async def completions(body: CompletionRequest, request: Request) -> Any:
    # A client that hangs up before its answer (or its stream's first events) is ready has its jobs cancelled.
    return await unless_client_leaves(request, _completions(body, request))


async def _completions(body: CompletionRequest, request: Request) -> Any:
    producer, observer, request_id = producer_of(request), observer_of(request, body.model), request_id_of(request)
    if not body.stream:
        return await completion_answer(producer, body, observer, request_id=request_id)
    created = int(time.time())
    resume = completion_resume_record(request, body, created)  # so the client can resume it (api/resume.py)
    stream = await open_completion_stream(
        producer, body, observer, request_id=request_id, resume=resume, created=created
    )
    return stream_response(sse_events(stream.streams, stream.lines()), producer)
