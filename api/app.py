"""The FastAPI application: OpenAI-compatible routes in front of the Redis job streams.

The process's one :class:`~broker.producer.Producer` is made in the lifespan (inside the server's event loop,
where its event-routing tasks must live) and kept in ``app.state.producer``, where a mounted web UI finds it too
(see :mod:`queuechat.compose`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from redis.exceptions import RedisError

from api import batches, chat, completions, embeddings, files, resume, tokenize
from api.anthropic.routes import router as anthropic_router
from api.auth import ApiKeyMiddleware
from api.bodylimit import BodyLimitMiddleware
from api.cors import CorsOptions, install_cors
from api.errors import CHUNK_MODELS, install_error_handlers
from api.metrics import ApiMetrics
from api.metrics import router as metrics_router
from api.misc import package_version
from api.misc import router as misc_router
from api.requestid import RequestIdMiddleware
from api.responses.routes import router as responses_router
from api.routes import router
from api.tenants import TenantGate
from api.tracing import RelaySpans, instrument
from broker import tracing
from broker.connection import async_client
from broker.keys import Keys
from broker.producer import Producer
from broker.settings import Settings


def create_app(
    settings: Settings | None = None, cors: CorsOptions | None = None, *, open_prefixes: Sequence[str] = ()
) -> FastAPI:
    """The API. ``open_prefixes`` are paths of mounted apps that check credentials themselves (the web UI)."""
    settings = settings or Settings()
    redis_url = settings.require_redis_url("the API")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer = app.state.producer = Producer(async_client(redis_url), settings)
        if producer.cluster:  # the cluster client learns the cluster before any pipeline (see broker/connection.py)
            with contextlib.suppress(RedisError, OSError):
                await producer.client.ping()
        await producer.declare_models()
        try:
            yield
        finally:
            await app.state.producer.close()
            await app.state.tenants.close()
            app.state.metrics.close()

    app = FastAPI(title="queuechat", version=package_version(), lifespan=lifespan)
    _document(app)
    app.state.settings = settings
    app.state.metrics = ApiMetrics(redis_url, Keys(settings.key_prefix), list(settings.wait_for_worker.models))
    app.state.relay_spans = RelaySpans()
    if tracing.enabled():
        instrument(app)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(chat.router)
    app.include_router(resume.router)
    app.include_router(completions.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(metrics_router)
    app.include_router(misc_router)
    app.include_router(embeddings.router)
    app.include_router(anthropic_router)
    app.include_router(responses_router)
    app.include_router(tokenize.router)
    # The last added runs first: request ids and the request log on everything, then CORS (answers preflights, and
    # decorates 401s so browsers can read them), then the key check and a tenant's admission (before any body is
    # read: a client without a key cannot make the server buffer one), then the body size cap.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.state.tenants = TenantGate(async_client(redis_url), Keys(settings.key_prefix))
    app.add_middleware(
        ApiKeyMiddleware,
        api_keys=settings.api_keys,
        exempt_prefixes=tuple(open_prefixes),
        tenants=app.state.tenants,
    )
    install_cors(app, cors)
    app.add_middleware(RequestIdMiddleware)
    return app


def _document(app: FastAPI) -> None:
    """/openapi.json as the API answers: errors are 400s in OpenAI's shape (FastAPI's own 422 is never sent), and
    the stream chunks' models are listed among the components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for model in CHUNK_MODELS:
            extra = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
            components.update(extra.pop("$defs", {}))
            components.setdefault(model.__name__, extra)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
