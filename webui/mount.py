"""Mounting the web UI into an existing FastAPI app (the API, for ``queuechat up``: one port for a laptop user).

What it is mounted into is the composition root's business (:mod:`queuechat.compose`); this module knows only
that it is a FastAPI app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Mount

from webui.app import FOOTER_LINKS, build_blocks
from webui.backend import Backend


def mount_webui(
    app: FastAPI,
    backend: Backend,
    path: str = "/ui",
    auth: Callable[[str, str], bool] | None = None,
) -> FastAPI:
    """Serve the web UI of ``backend`` under ``path`` of an existing app (``queuechat up`` mounts it into the
    API); ``auth`` puts Gradio's login page in front of it."""
    gr.mount_gradio_app(app, build_blocks(backend), path=path, footer_links=FOOTER_LINKS, ssr_mode=False, auth=auth)
    (mounted,) = [r for r in app.routes if isinstance(r, Mount) and r.path == path]
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with outer(app_) as state:
            watcher = asyncio.create_task(_end_heartbeats_on_exit(mounted.app))
            try:
                yield state
            finally:
                watcher.cancel()
                await backend.close()

    app.router.lifespan_context = lifespan
    return app


async def _end_heartbeats_on_exit(gradio_app: Any) -> None:
    """Every open page holds a heartbeat stream that Gradio ends only when its own ``launch()`` server stops.
    Mounted, nothing tells it, and uvicorn would wait out its whole graceful-shutdown timeout for those streams
    (the API's is the drain timeout) before stopping. sse-starlette, which the API uses anyway, records uvicorn's
    exit signal in its public ``AppStatus``."""
    from sse_starlette.sse import AppStatus

    while not AppStatus.should_exit:
        await asyncio.sleep(0.2)
    gradio_app.stop_event.set()
