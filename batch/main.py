"""``queuechat batch-worker`` / ``python -m batch``: an rq worker on the batch queue (see :mod:`batch.worker`).

Only typer is imported here; rq and the serving layer are imported when the command runs, so that other
commands (``queuechat info``) never load them.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

log = logging.getLogger(__name__)


def batch_worker_command(
    redis_url: Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")] = None,
    burst: Annotated[bool, typer.Option(help="Quit when the queue is empty")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run batches (the Batch API's rq jobs) from the batch queue."""
    from batch.queue import NO_CLUSTER
    from batch.worker import BatchWorker
    from broker.connection import is_cluster_url, sync_client
    from broker.logs import configure_logging
    from broker.settings import Settings

    configure_logging(log_level)
    settings = Settings.load(redis_url)
    try:
        url = settings.require_redis_url("a batch worker")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if is_cluster_url(url):
        raise typer.BadParameter(f"{url.partition('://')[0]}:// is a Redis Cluster URL; {NO_CLUSTER}.")
    worker = BatchWorker(settings, sync_client(url))
    log.info("batch worker on queue %s, files in %s", settings.batch_queue_name, settings.files_dir)
    worker.work(burst=burst, logging_level=log_level.upper())


def main() -> None:
    typer.run(batch_worker_command)
