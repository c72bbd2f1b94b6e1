"""Health and the model list; chat and completions live in their own modules."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.context import producer_of
from api.errors import ERROR_RESPONSES
from serving.models import model_list
from serving.responses import Health, ModelList

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "The broker is down"}})
async def health(request: Request) -> JSONResponse:
    """200 while the broker answers; 503 (and which part is down) otherwise, for load balancers and compose."""
    producer = producer_of(request)
    up = await producer.ping()
    body = Health(
        status="ok" if up else "degraded",
        broker="up" if up else "down",
        events="connected" if producer.router.connected else "disconnected",
        open_jobs=producer.router.channels,
    )
    return JSONResponse(body.model_dump(), 200 if up else 503)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return await model_list(producer_of(request))
