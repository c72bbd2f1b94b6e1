"""The FastAPI application: OpenAI-compatible routes in front of the Redis job streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import batches, chat, completions, files
from api.errors import install_error_handlers
from api.routes import router
from broker.connection import async_client
from broker.producer import Producer
from broker.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not settings.redis_url:
        raise ValueError("the API needs a Redis URL (--redis-url or QUEUECHAT_REDIS_URL)")
    redis_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.producer = Producer(async_client(redis_url), settings)
        try:
            yield
        finally:
            await app.state.producer.close()

    app = FastAPI(title="queuechat", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    return app
