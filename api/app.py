"""The FastAPI application: OpenAI-compatible routes in front of the Redis job streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import batches, chat, completions, files, resume
from api.auth import ApiKeyMiddleware, api_key_login
from api.cors import CorsOptions, install_cors
from api.embeddings import router as embeddings_router
from api.errors import install_error_handlers
from api.metrics import ApiMetrics
from api.metrics import router as metrics_router
from api.misc import package_version
from api.misc import router as misc_router
from api.requestid import RequestIdMiddleware
from api.routes import router
from broker.connection import async_client
from broker.keys import Keys
from broker.producer import Producer
from broker.settings import Settings

WEBUI_PATH = "/ui"


def create_app(settings: Settings | None = None, cors: CorsOptions | None = None, *, webui: bool = False) -> FastAPI:
    """The API; with ``webui`` the chat web UI is mounted at ``/ui`` too (one port, as ``queuechat up`` serves)."""
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
            app.state.metrics.close()

    app = FastAPI(title="queuechat", version=package_version(), lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = ApiMetrics(redis_url, Keys(settings.key_prefix))
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(chat.router)
    app.include_router(resume.router)
    app.include_router(completions.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(metrics_router)
    app.include_router(misc_router)
    app.include_router(embeddings_router)
    # The last added runs first: request ids on everything, then CORS (answers preflights, and decorates 401s so
    # browsers can read them), then the key check.
    if settings.api_keys:
        # A browser cannot send a Bearer header: the mounted web UI asks for an API key on its own login page.
        exempt = (WEBUI_PATH,) if webui else ()
        app.add_middleware(ApiKeyMiddleware, api_keys=settings.api_keys, exempt_prefixes=exempt)
    install_cors(app, cors)
    app.add_middleware(RequestIdMiddleware)
    if webui:
        from webui.mount import mount_webui  # imports gradio, which an API-only process never needs

        auth = api_key_login(settings.api_keys) if settings.api_keys else None
        mount_webui(app, settings, path=WEBUI_PATH, auth=auth)
    return app
