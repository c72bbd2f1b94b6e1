"""``queuechat keys add|list|limits|revoke``: API keys kept in Redis, one per tenant, with their limits.

A key's secret is printed once, by ``add``, and stored only as a digest. Once Redis holds any key, every API
replica asks every request for one (``--api-keys`` keys keep working, without limits).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from broker.fairness import MAX_WEIGHT
from broker.tenants import TenantLimits, TenantStore

app = typer.Typer(help="API keys kept in Redis, with per-key limits.", no_args_is_help=True)

RedisUrl = Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")]
Rpm = Annotated[int, typer.Option("--rpm", min=0, help="requests per minute (0: unlimited)")]
Tpm = Annotated[int, typer.Option("--tpm", min=0, help="tokens per minute, prompt + max_tokens (0: unlimited)")]
Concurrency = Annotated[int, typer.Option("--concurrency", min=0, help="requests in flight (0: unlimited)")]
Weight = Annotated[
    int,
    typer.Option(
        "--weight",
        min=1,
        max=MAX_WEIGHT,
        help="the key's share of a model's workers while other keys' jobs wait too: jobs per turn (default 1)",
    ),
]
Models = Annotated[str | None, typer.Option("--models", help="comma-separated models the key may use (default all)")]


def _store(redis_url: str | None) -> TenantStore:
    from broker.connection import sync_client
    from broker.keys import Keys
    from broker.settings import Settings

    settings = Settings.load(redis_url)
    try:
        url = settings.require_redis_url("queuechat keys")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return TenantStore(sync_client(url), Keys(settings.key_prefix))


def _limits(rpm: int, tpm: int, concurrency: int, models: str | None, weight: int) -> TenantLimits:
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    return TenantLimits(
        requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrency, models=names, weight=weight
    )


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the tenant's name (letters, digits, . _ -)")],
    rpm: Rpm = 0,
    tpm: Tpm = 0,
    concurrency: Concurrency = 0,
    models: Models = None,
    weight: Weight = 1,
    redis_url: RedisUrl = None,
) -> None:
    """Make a key for a tenant and print its secret (shown this once only)."""
    from pydantic import ValidationError

    try:
        secret = _store(redis_url).add(name, _limits(rpm, tpm, concurrency, models, weight))
    except (ValueError, ValidationError) as exc:
        _fail(str(exc).splitlines()[0] if isinstance(exc, ValidationError) else str(exc))
    typer.echo(secret)


@app.command("limits")
def limits(
    name: Annotated[str, typer.Argument(help="the tenant's name")],
    rpm: Rpm = 0,
    tpm: Tpm = 0,
    concurrency: Concurrency = 0,
    models: Models = None,
    weight: Weight = 1,
    redis_url: RedisUrl = None,
) -> None:
    """Replace a key's limits (every replica applies them within seconds)."""
    try:
        _store(redis_url).set_limits(name, _limits(rpm, tpm, concurrency, models, weight))
    except ValueError as exc:
        _fail(str(exc))


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="the tenant's name")], redis_url: RedisUrl = None) -> None:
    """Refuse a key from now on (every replica within seconds); its usage stays listed."""
    try:
        _store(redis_url).revoke(name)
    except ValueError as exc:
        _fail(str(exc))


@app.command("list")
def list_keys(redis_url: RedisUrl = None) -> None:
    """The keys, their limits and their usage (never their secrets)."""
    store = _store(redis_url)
    name = Column("name", no_wrap=True)  # a name folded over two lines could not be copied from the list
    table = Table(
        name, "state", "rpm", "tpm", "concurrency", "models", "weight", "requests", "rejected", "tokens in/out"
    )
    for tenant in store.all():
        used, lim = store.usage(tenant.name), tenant.limits
        table.add_row(
            tenant.name,
            "revoked" if tenant.revoked else "active",
            str(lim.requests_per_minute or "-"),
            str(lim.tokens_per_minute or "-"),
            str(lim.concurrent_requests or "-"),
            ",".join(lim.models) if lim.models is not None else "all",
            str(lim.weight),
            str(used.get("requests", 0)),
            str(used.get("rejected", 0)),
            f"{used.get('prompt_tokens', 0)}/{used.get('completion_tokens', 0)}",
        )
    Console().print(table)
