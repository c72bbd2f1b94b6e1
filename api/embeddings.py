"""``POST /v1/embeddings``: the route around :mod:`serving.embeddings`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.context import producer_of, request_id_of, request_log_of
from api.errors import ERROR_RESPONSES
from serving.embeddings import EmbeddingRequest, embeddings_answer
from serving.responses import EmbeddingList

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    # the request's log line watches the job; the metrics count generation only
    observer = request_log_of(request, body.model)
    return await embeddings_answer(producer_of(request), body, observer, request_id=request_id_of(request))
