"""Health and the model list; chat and completions live in their own modules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.context import producer_of
from serving.models import live_model_entries

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the broker answers; 503 (and which part is down) otherwise, for load balancers and compose."""
    producer = producer_of(request)
    up = await producer.ping()
    body = {
        "status": "ok" if up else "degraded",
        "broker": "up" if up else "down",
        "events": "connected" if producer.router.connected else "disconnected",
        "open_jobs": producer.router.channels,
    }
    return JSONResponse(body, 200 if up else 503)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await live_model_entries(producer_of(request))}
