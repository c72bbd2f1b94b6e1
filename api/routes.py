"""Health and the model list; chat and completions live in their own modules."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.context import producer_of
from api.errors import ERROR_RESPONSES
from broker.producer import Producer
from serving.models import model_list
from serving.responses import Health, ModelList

log = logging.getLogger(__name__)
# A job id no job has (ids are hex): the cancel key the health check touches
HEALTH_PROBE_ID = "health-check"

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "The broker is down"}})
async def health(request: Request) -> JSONResponse:
    """200 while the broker takes jobs; 503 (and which part is down) otherwise, for load balancers and compose."""
    producer = producer_of(request)
    up = await _takes_writes(producer)
    body = Health(
        status="ok" if up else "degraded",
        broker="up" if up else "down",
        events="connected" if producer.router.connected else "disconnected",
        open_jobs=producer.router.channels,
    )
    return JSONResponse(body.model_dump(), 200 if up else 503)


async def _takes_writes(producer: Producer) -> bool:
    """Whether the broker is a primary this API can write jobs to. A PING is not enough: a Sentinel and a read-only
    replica answer it, and every request then failed with 503 while /health said 200. PEXPIRE is a write (a
    replica refuses it with READONLY, a Sentinel does not know it) that changes nothing here (the key never
    exists: no job has that id), and the front's ACL allows it."""
    try:
        await producer.client.pexpire(producer.keys.cancel(HEALTH_PROBE_ID), 1)
    except (RedisError, OSError) as exc:
        log.debug("health: the broker takes no writes: %s", exc)
        return False
    return True


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return await model_list(producer_of(request))
