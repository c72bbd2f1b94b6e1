"""``queuechat``: up (everything on one machine), api, worker, info, webui, batch-worker."""

from __future__ import annotations

from typing import Annotated

import typer

from batch.main import batch_worker_command
from queuechat.apiserver import api_command
from queuechat.info import info_command
from queuechat.keys import app as keys_app
from queuechat.probe import probe_command
from queuechat.up import up_command
from webui.main import webui_command
from workers.main import worker_command

app = typer.Typer(
    help="LLM serving on a Redis job queue: OpenAI-compatible API, continuously batching workers, chat web UI.",
    no_args_is_help=True,
    add_completion=False,
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("queuechat")
    except PackageNotFoundError:  # a checkout that is not installed
        return "dev"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"queuechat {version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    """LLM serving on a Redis job queue: OpenAI-compatible API, continuously batching workers, chat web UI."""


app.command("up")(up_command)
app.command("api")(api_command)
app.command("worker")(worker_command)
app.command("batch-worker")(batch_worker_command)
app.command("info")(info_command)
app.command("webui")(webui_command)
app.command("probe")(probe_command)
app.add_typer(keys_app, name="keys")
