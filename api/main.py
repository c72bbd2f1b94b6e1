"""``queuechat api`` / ``python -m api``: serve the OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated

import typer


def api_command(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    redis_url: Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve the OpenAI-compatible API."""
    import uvicorn

    from api.app import create_app
    from broker.logs import configure_logging
    from broker.settings import Settings

    configure_logging(log_level)
    settings = Settings.load(redis_url)
    if not settings.redis_url:
        raise typer.BadParameter("the API needs --redis-url (or QUEUECHAT_REDIS_URL); `queuechat up` embeds one")
    # On SIGTERM uvicorn stops accepting at once; open streams get the drain timeout to finish (see routes).
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
    )


def main() -> None:
    typer.run(api_command)
