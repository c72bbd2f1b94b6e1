"""``queuechat webui`` / ``python -m webui``: serve the chat web UI on its own port.

Flag names follow FastChat's gradio_web_server where they mean the same; ``--controller-url`` becomes
``--redis-url`` (env ``QUEUECHAT_REDIS_URL``). ``queuechat up`` does not need this: it mounts the UI into the API
at ``/ui``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer


def parse_auth_file(path: Path) -> list[tuple[str, str]]:
    """FastChat's format: ``user:password`` pairs separated by commas (or new lines)."""
    pairs = []
    for item in path.read_text().replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise typer.BadParameter(f"{path}: expected user:password, got {item!r}")
        pairs.append((user, password))
    if not pairs:
        raise typer.BadParameter(f"{path} holds no user:password pair")
    return pairs


def webui_command(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 7860,
    redis_url: Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")] = None,
    share: Annotated[bool, typer.Option("--share", help="Also publish a public gradio.live link")] = False,
    model_list_mode: Annotated[
        Literal["once", "reload"] | None,
        typer.Option(help="once: read the live models at the first page load; reload: at every page load"),
    ] = None,
    gradio_auth_path: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="File of user:password pairs, comma-separated"),
    ] = None,
    gradio_root_path: Annotated[str | None, typer.Option(help="Root path when served behind a proxy")] = None,
    concurrency_count: Annotated[int | None, typer.Option(min=1, help="Replies streamed at once per event")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Directory of the per-day vote logs")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve the chat web UI (Chat and Compare tabs) in front of the Redis job streams."""
    from broker.logs import configure_logging
    from broker.settings import Settings
    from webui.app import FOOTER_LINKS, build_blocks
    from webui.backend import Backend
    from webui.settings import WebUISettings

    configure_logging(log_level)
    try:
        settings = Settings.load(redis_url)
        settings.require_redis_url("the web UI")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    ui = WebUISettings()
    overrides = {"model_list_mode": model_list_mode, "concurrency_count": concurrency_count, "log_dir": log_dir}
    ui = ui.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    auth = parse_auth_file(gradio_auth_path) if gradio_auth_path else None
    demo = build_blocks(Backend(settings, ui))
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        root_path=gradio_root_path,
        footer_links=FOOTER_LINKS,
        ssr_mode=False,
        show_error=True,
    )


def main() -> None:
    typer.run(webui_command)
