"""The composition root of a front process: the API, and with ``webui`` the chat web UI mounted at ``/ui``.

The API and a mounted UI share one :class:`~broker.producer.Producer` (the API's, made in its lifespan inside the
server's event loop), so the process holds one Redis pool and one event connection. ``queuechat up`` and
``queuechat api --webui`` build their app here; the API and the web UI packages know nothing of each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.app import create_app as create_api
from broker.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.cors import CorsOptions
    from webui.settings import WebUISettings

WEBUI_PATH = "/ui"


def create_app(
    settings: Settings | None = None,
    cors: CorsOptions | None = None,
    *,
    webui: bool = False,
    ui: WebUISettings | None = None,
) -> FastAPI:
    """The API; with ``webui`` the chat web UI is mounted at ``/ui`` too (one port, as ``queuechat up`` serves)."""
    settings = settings or Settings()
    # A browser cannot send a Bearer header: the mounted web UI asks for an API key on its own login page.
    app = create_api(settings, cors, open_prefixes=(WEBUI_PATH,) if webui else ())
    if webui:
        # gradio, which an API-only process never needs, is imported only here
        from api.auth import api_key_login
        from webui.backend import Backend
        from webui.mount import mount_webui
        from webui.settings import WebUISettings

        backend = Backend(settings, ui or WebUISettings(), producer=lambda: app.state.producer)
        auth = api_key_login(settings.api_keys) if settings.api_keys else None
        mount_webui(app, backend, path=WEBUI_PATH, auth=auth)
        app.state.webui_backend = backend
    return app
