"""OpenAI's Batch API: create a batch from an uploaded file, follow it, list batches, cancel one.

Creating a batch records it in Redis and enqueues an rq job (JSON-serialised, never pickled) on the batch queue;
a batch worker (``queuechat batch-worker``) runs it. See :mod:`batch.runner` for how the lines are run. A batch
belongs to the API key that created it (from an input file of the same key): another key gets 404 for it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

import redis
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.context import owner_of
from api.errors import ERROR_RESPONSES
from api.files import broker_errors, get_file, settings_of, store_of
from batch.filestore import BATCH_ENDPOINTS
from batch.queue import COMPLETION_WINDOWS, NO_CLUSTER, cancel_queued_run, enqueue_run
from broker.batches import TERMINAL, BatchStatus
from broker.connection import is_cluster_url, sync_client
from broker.errors import InvalidRequest, NotFound
from serving.responses import Batch, BatchList

router = APIRouter(responses=ERROR_RESPONSES)

# What the batch runner can run (OpenAI also batches /v1/embeddings: refused with a 400 naming `endpoint` until the
# runner has an embeddings answer to call).
RUNNABLE = tuple(e for e in BATCH_ENDPOINTS if e != "/v1/embeddings")


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _sync_client(request: Request) -> redis.Redis:
    client: redis.Redis | None = getattr(request.app.state, "sync_redis", None)
    if client is None:
        url = settings_of(request).redis_url
        assert url, "create_app refuses to start without a Redis URL"
        client = request.app.state.sync_redis = sync_client(url)
    return client


def _has_route(request: Request, path: str) -> bool:
    """Whether this API serves ``path`` (embeddings may not be built): the OpenAPI schema lists every route."""
    return path in request.app.openapi().get("paths", {})


async def _get(request: Request, batch_id: str) -> Batch:
    with broker_errors():
        obj = await store_of(request).batch(batch_id, owner_of(request))
    if obj is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return Batch.model_validate(obj)


@router.post("/v1/batches")
async def create_batch(body: CreateBatch, request: Request) -> Batch:
    settings = settings_of(request)
    if is_cluster_url(settings.redis_url or ""):  # no batch worker could ever run it
        raise InvalidRequest(f"Batches are not available on this deployment: {NO_CLUSTER}.")
    if body.endpoint not in RUNNABLE or not _has_route(request, body.endpoint):
        served = [e for e in RUNNABLE if _has_route(request, e)]
        raise InvalidRequest(f"endpoint must be one of {', '.join(served)}, not {body.endpoint!r}.", param="endpoint")
    window = COMPLETION_WINDOWS.get(body.completion_window)
    if window is None:
        raise InvalidRequest("completion_window must be '24h'.", param="completion_window")
    store = store_of(request)
    owner = owner_of(request)
    file_obj, _ = await get_file(store, body.input_file_id, owner)
    if file_obj.get("purpose") != "batch":
        raise InvalidRequest(f"File {body.input_file_id} was not uploaded for batches.", param="input_file_id")
    others = sorted(set(file_obj.get("urls", [])) - {body.endpoint})
    if others:
        raise InvalidRequest(
            f"The input file has requests for {', '.join(others)}, but the batch's endpoint is {body.endpoint}.",
            param="input_file_id",
        )
    now = int(time.time())
    batch_id = f"batch_{uuid.uuid4().hex}"
    meta = {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "created_at": now,
        "expires_at": now + window,
        "metadata": body.metadata,
    }
    rq_job_id = f"queuechat-{batch_id}"
    with broker_errors():
        await store.add_batch(meta, total=int(file_obj.get("lines", 0)), rq_job_id=rq_job_id, owner=owner)
        # If this fails, the batch stays 'validating' without a job; a batch worker's orphan scan queues it.
        await asyncio.to_thread(enqueue_run, _sync_client(request), settings, batch_id, rq_job_id, window)
    return await _get(request, batch_id)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> Batch:
    return await _get(request, batch_id)


@router.get("/v1/batches")
async def list_batches(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query()] = None,
) -> BatchList:
    with broker_errors():
        found, has_more = await store_of(request).batches_of(owner_of(request), after, limit)
    page = [Batch.model_validate(b) for b in found]
    return BatchList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=has_more,
    )


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> Batch:
    store = store_of(request)
    obj = await _get(request, batch_id)
    status = BatchStatus(obj.status)
    if status in TERMINAL:
        raise InvalidRequest(f"Batch {batch_id} cannot be cancelled: its status is {status.value!r}.")
    with broker_errors():
        fields = await store.batch_fields(batch_id) or {}
        await store.set_status(
            batch_id, BatchStatus.CANCELLING, allowed_from={BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS}
        )
        # Not started yet: nobody would finish the cancel, so it is finished here. Otherwise the batch worker stops
        # feeding lines, lets the running ones end and writes the partial output.
        taken_off = await asyncio.to_thread(cancel_queued_run, _sync_client(request), fields.get("rq_job_id", ""))
        if taken_off:
            await store.set_status(batch_id, BatchStatus.CANCELLED, allowed_from={BatchStatus.CANCELLING})
    return await _get(request, batch_id)
