"""Health and the model list; chat and completions live in their own modules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.streaming import producer_of

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
    live = await producer_of(request).live_models()
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(min(w.card.started for w in workers)),
            "owned_by": "queuechat",
            "max_model_len": max((w.card.max_model_len or 0) for w in workers) or None,
        }
        for name, workers in sorted(live.items())
    ]
    return {"object": "list", "data": data}
