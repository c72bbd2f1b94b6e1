"""``queuechat api`` / ``python -m api``: serve the OpenAI-compatible API (with ``--webui``, the chat web UI too)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

# An idle connection outlives the pools of the clients and proxies in front: a server that closes first races the
# client's next request on that socket, which then fails with a connection error (httpx, so the openai and
# anthropic clients, keeps idle connections 5 s, uvicorn's own default; nginx's upstream keep-alive and AWS load
# balancers keep theirs 60 s). 75 s is nginx's own keep-alive default, above those.
KEEP_ALIVE_SECONDS = 75


def api_command(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    redis_url: Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    api_keys: Annotated[
        str | None,
        typer.Option(help="Comma-separated API keys clients must send as Bearer tokens (env QUEUECHAT_API_KEYS)"),
    ] = None,
    allowed_origins: Annotated[
        str | None, typer.Option(help="Comma-separated CORS origins, or '*'; CORS is off without it")
    ] = None,
    allowed_methods: Annotated[str, typer.Option(help="Comma-separated CORS methods")] = "*",
    allowed_headers: Annotated[str, typer.Option(help="Comma-separated CORS headers")] = "*",
    allow_credentials: Annotated[bool, typer.Option(help="Allow CORS requests with credentials")] = False,
    webui: Annotated[bool, typer.Option("--webui", help="Also serve the chat web UI at /ui")] = False,
    limit_concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Open connections (streams included) beyond which a new request is answered 503 at once",
        ),
    ] = 2048,
    header_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a connection gets to send a whole request head, else it is closed"),
    ] = 10.0,
    timeout_keep_alive: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds an idle keep-alive connection is kept open; longer than clients and proxies keep theirs",
        ),
    ] = KEEP_ALIVE_SECONDS,
) -> None:
    """Serve the OpenAI-compatible API."""
    import uvicorn

    from api.cors import CorsOptions, split_list
    from broker import tracing
    from broker.logs import configure_logging
    from broker.settings import Settings
    from queuechat.compose import create_app
    from queuechat.header_timeout import with_header_timeout

    configure_logging(log_level)
    tracing.configure("queuechat-api")
    try:
        settings = Settings.load(redis_url)
    except ValueError as exc:  # a QUEUECHAT_ variable that cannot be read: say which, before serving anything
        raise typer.BadParameter(str(exc)) from None
    if api_keys:
        settings.api_keys = split_list(api_keys)
    cors = CorsOptions(
        allowed_origins=split_list(allowed_origins),
        allowed_methods=split_list(allowed_methods),
        allowed_headers=split_list(allowed_headers),
        allow_credentials=allow_credentials,
    )
    try:
        settings.require_redis_url("the API")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise_open_file_limit()
    # On SIGTERM uvicorn stops accepting at once; open streams get the drain timeout to finish (see routes).
    # Slow or idle clients cannot hold the server: heads must arrive within header_timeout, idle keep-alive
    # connections close after timeout_keep_alive, and beyond limit_concurrency connections a request gets a 503.
    uvicorn.run(
        create_app(settings, cors, webui=webui),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
        http=with_header_timeout(header_timeout),
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=timeout_keep_alive,
    )


def raise_open_file_limit() -> None:
    """The soft open-file limit up to the hard one: every connection is a descriptor, and the soft limit (often
    1,024) is below what the connection limit lets in."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    typer.run(api_command)
