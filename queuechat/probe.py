"""``queuechat probe``: Kubernetes readiness and liveness checks of a worker, from what the registry says.

A worker opens no port, so its probes are exec probes that ask Redis about the worker of this host (a pod runs
one worker, and a card names its host): ``ready`` while it is registered with a live heartbeat and not draining,
``alive`` while its heartbeat is live at all (a draining worker is still alive, finishing its work). The probe only
reads (HGETALL of the registry, MGET of heartbeat keys), so the monitor ACL user may run it. Runnable as
``python -m queuechat.probe`` too, which imports nothing of the API, the web UI or torch.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from typing import Annotated

import typer

from broker.keys import Keys
from broker.registry import LiveWorker, heartbeat_keys, split_registry

PROBE_TIMEOUT = 2.0


class Check(StrEnum):
    READY = "ready"
    ALIVE = "alive"


def workers_of_host(redis_url: str, key_prefix: str, host: str) -> list[LiveWorker]:
    from broker.connection import sync_client

    client = sync_client(redis_url, command_timeout=PROBE_TIMEOUT)
    keys = Keys(key_prefix)
    cards = client.hgetall(keys.workers)
    live, _expired = split_registry(cards, client.mget(heartbeat_keys(keys, cards)) if cards else [])
    return [w for w in live if w.card.host == host]


def passes(check: Check, workers: list[LiveWorker]) -> bool:
    if check is Check.ALIVE:
        return bool(workers)
    return any(w.status.state != "draining" for w in workers)


def probe_command(
    check: Annotated[Check, typer.Argument(help="ready: registered and taking work; alive: heartbeat live")],
    redis_url: Annotated[str | None, typer.Option("--redis-url", "-u", envvar="QUEUECHAT_REDIS_URL")] = None,
    key_prefix: Annotated[str, typer.Option(envvar="QUEUECHAT_KEY_PREFIX")] = "qc",
    host: Annotated[str | None, typer.Option(help="the worker's host name (default: this host's)")] = None,
) -> None:
    """Exit 0 if this host's worker passes the check, 1 if not (or Redis cannot be reached)."""
    import redis

    if not redis_url:
        typer.echo("probe needs --redis-url (or QUEUECHAT_REDIS_URL)", err=True)
        raise typer.Exit(2)
    name = host or socket.gethostname()  # what the worker wrote into its card
    try:
        workers = workers_of_host(redis_url, key_prefix, name)
    except (redis.RedisError, OSError) as exc:
        typer.echo(f"cannot read the registry: {exc}", err=True)
        raise typer.Exit(1) from None
    if not passes(check, workers):
        typer.echo(f"no {'live' if check is Check.ALIVE else 'ready'} worker on host {name}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(probe_command)
