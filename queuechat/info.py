"""``queuechat info``: the queues and workers at a glance, the way ``rq info`` shows rq's.

The data comes from :func:`broker.monitor.snapshot`; this module only lays it out: rich tables with bars for
people, ``--raw`` lines for scripts, ``--json`` for machines.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from broker.batches import BatchProgress
from broker.monitor import KeyInfo, QueueInfo, Snapshot, WorkerInfo

BAR_WIDTH = 24
STATE_STYLES = {"busy": "green", "idle": "dim", "draining": "yellow", "wedged": "bold red"}
DEFAULT_URL = "redis://127.0.0.1:6379/0"
INFO_COMMAND_TIMEOUT = 2.0


def redact(url: str) -> str:
    """The URL without its password, for messages (a Sentinel URL's several hosts included)."""
    return re.sub(r"^([A-Za-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def problem(exc: Exception, url: str) -> str:
    """One line for the operator: unreachable (network, timeout) or reached but refused (auth, ACL)."""
    import redis

    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError) and not isinstance(
        exc, redis.AuthenticationError
    ):
        return f"cannot reach Redis at {redact(url)}: {exc}"
    return f"Redis at {redact(url)} refused: {exc}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def updated_line(snap: Snapshot) -> str:
    return f"Updated: {datetime.fromtimestamp(snap.updated).strftime('%Y-%m-%d %H:%M:%S')}"


def summary_line(snap: Snapshot) -> str:
    return f"{len(snap.queues)} models, {snap.waiting} jobs waiting"


def logs_line(snap: Snapshot) -> str:
    """The jobs' event logs (what a stream resumes and a continued job is read from) and their memory."""
    return f"{snap.event_logs} event logs, {snap.event_log_bytes / 2**20:.1f} MiB"


def workers_line(snap: Snapshot) -> str:
    return f"{len(snap.workers)} workers, {sum(w.running for w in snap.workers)} jobs running"


# ------------------------------------------------------------------ raw: one line per thing, key=value


def _queue_raw(q: QueueInfo) -> str:
    oldest = "-" if q.oldest_waiting_s is None else f"{q.oldest_waiting_s:.3f}"
    return (
        f"queue {q.model} waiting={q.waiting} running={q.running} completed={q.completed} failed={q.failed} "
        f"cancelled={q.cancelled} expired={q.expired} dead={q.dead} reclaimed={q.reclaimed} continued={q.continued} "
        f"oldest_waiting_s={oldest} tokens_per_s={q.tokens_per_s:.2f} workers={q.workers} slots={q.slots}"
    )


def _worker_raw(w: WorkerInfo) -> str:
    return (
        f"worker {w.id} host={w.host} pid={w.pid} models={','.join(w.models)} state={w.state} running={w.running} "
        f"slots={w.slots} completed={w.completed} failed={w.failed} heartbeat_age_s={w.heartbeat_age_s:.3f} "
        f"tokens_per_s={w.tokens_per_s:.2f} device={w.device}"
    )


def _batch_raw(b: BatchProgress) -> str:
    return (
        f"batch {b.id} status={b.status} endpoint={b.endpoint} done={b.done}/{b.total} completed={b.completed} "
        f"failed={b.failed} running={'yes' if b.running else 'no'}"
    )


def _key_raw(k: KeyInfo, snap: Snapshot) -> str:
    by_model = ",".join(f"{q.model}:{q.waiting_by_key[k.name]}" for q in snap.queues if q.waiting_by_key.get(k.name))
    return (
        f"key {k.name} requests={k.requests} rejected={k.rejected} prompt_tokens={k.prompt_tokens} "
        f"completion_tokens={k.completion_tokens} waiting={k.waiting} waiting_by_model={by_model or '-'}"
    )


def render_raw(snap: Snapshot, *, queues: bool = True, workers: bool = True, by_model: bool = False) -> str:
    lines: list[str] = []
    if queues:
        lines += [_queue_raw(q) for q in snap.queues]
        lines += [_key_raw(k, snap) for k in snap.keys]
        lines.append(summary_line(snap))
        if snap.event_logs:
            lines.append(logs_line(snap))
        lines += [_batch_raw(b) for b in snap.batches]
    if workers:
        if by_model:
            lines += [
                f"model {q.model} workers={','.join(w.id for w in snap.workers_of(q.model))}" for q in snap.queues
            ]
        else:
            lines += [_worker_raw(w) for w in snap.workers]
        lines.append(workers_line(snap))
    lines.append(updated_line(snap))
    return "\n".join(lines)


# ------------------------------------------------------------------ rich: tables with bars, for people


def bar(q: QueueInfo, scale: int, width: int) -> Text:
    """Running jobs in green, then waiting ones in yellow, scaled so the longest queue fills the bar."""
    running = round(width * q.running / scale) if scale else 0
    waiting = round(width * q.waiting / scale) if scale else 0
    text = Text("█" * running, style="green")
    text.append("█" * waiting, style="yellow")
    text.append("·" * max(width - running - waiting, 0), style="dim")
    return text


def _table(*columns: str) -> Table:
    """A borderless table. Columns named with a leading ">" hold numbers: right-aligned and never wrapped; the
    others fold when the terminal is narrow."""
    table = Table(box=None, pad_edge=False, padding=(0, 0, 0, 1), header_style="bold")
    for column in columns:
        number = column.startswith(">")
        table.add_column(column.lstrip(">"), justify="right" if number else "left", no_wrap=number)
    return table


QUEUE_NUMBERS = ("wait", "run", "done", "fail", "canc", "exp", "dead", "oldest", "tok/s", "wkrs")


def _queue_cells(q: QueueInfo) -> list[Text]:
    def cell(value: object, style: str = "") -> Text:
        return Text(str(value), style=style)

    return [
        cell(q.waiting, "yellow" if q.waiting else ""),
        cell(q.running, "green" if q.running else ""),
        cell(q.completed),
        cell(q.failed, "red" if q.failed else ""),
        cell(q.cancelled),
        cell(q.expired),
        cell(q.dead, "red" if q.dead else ""),
        cell(age(q.oldest_waiting_s)),
        cell(f"{q.tokens_per_s:.1f}"),
        cell(q.workers, "" if q.workers else "red"),
    ]


def queues_table(snap: Snapshot, width: int = 80) -> Table:
    rows = [(q, _queue_cells(q)) for q in snap.queues]
    # The bar gets what the numbers and the names leave of the terminal's width (none on a very narrow one).
    used = max((len(q.model) for q in snap.queues), default=5) + len(QUEUE_NUMBERS) + 1
    used += sum(max([len(h), *(len(cells[i]) for _, cells in rows)]) for i, h in enumerate(QUEUE_NUMBERS))
    bar_width = min(BAR_WIDTH, width - used - 1)
    with_bar = bar_width >= 4
    table = _table("model", *([">"] if with_bar else []), *(">" + h for h in QUEUE_NUMBERS))
    scale = max((q.waiting + q.running for q in snap.queues), default=0)
    for q, cells in rows:
        table.add_row(Text(q.model, style="bold"), *([bar(q, scale, bar_width)] if with_bar else []), *cells)
    return table


def workers_table(snap: Snapshot) -> Table:
    table = _table("worker", "host/pid", "models", ">state", ">run", ">done/fail", ">beat", ">tok/s", "device")
    for w in snap.workers:
        table.add_row(
            w.id,
            f"{w.host}/{w.pid}",
            ", ".join(w.models),
            Text(w.state, style=STATE_STYLES.get(w.state, "")),
            f"{w.running}/{w.slots}",
            f"{w.completed}/{w.failed}",
            age(w.heartbeat_age_s),
            f"{w.tokens_per_s:.1f}",
            w.device,
        )
    return table


def by_model_table(snap: Snapshot) -> Table:
    table = _table("model", "workers")
    for q in snap.queues:
        serving = snap.workers_of(q.model)
        table.add_row(Text(q.model, style="bold"), ", ".join(w.id for w in serving) or Text("none", style="red"))
    return table


def batches_table(snap: Snapshot) -> Table:
    table = _table("batch", "status", "endpoint", "done", "failed", "worker")
    for b in snap.batches:
        table.add_row(b.id, b.status, b.endpoint, f"{b.done}/{b.total}", str(b.failed), "running" if b.running else "-")
    return table


def keys_table(snap: Snapshot) -> Table:
    """The API keys' usage and the jobs each has waiting (requests without a key too, once keys queue jobs)."""
    table = _table("key", ">requests", ">429s", ">tokens in/out", ">waiting")
    for k in snap.keys:
        tokens = f"{k.prompt_tokens}/{k.completion_tokens}"
        table.add_row(k.name, str(k.requests), str(k.rejected), tokens, str(k.waiting))
    unkeyed = sum(q.waiting_by_key.get("", 0) for q in snap.queues)
    if any("" in q.waiting_by_key for q in snap.queues):
        table.add_row(Text("(no key)", style="dim"), "-", "-", "-", str(unkeyed))
    return table


def render_rich(
    snap: Snapshot, *, queues: bool = True, workers: bool = True, by_model: bool = False, width: int = 80
) -> RenderableType:
    parts: list[RenderableType] = []
    if queues:
        parts += [queues_table(snap, width), Text(summary_line(snap))]
        parts += [Text(logs_line(snap)), Text("")] if snap.event_logs else [Text("")]
        if snap.keys:
            parts += [keys_table(snap), Text("")]
        if snap.batches:
            parts += [batches_table(snap), Text("")]
    if workers:
        parts += [by_model_table(snap) if by_model else workers_table(snap), Text(workers_line(snap)), Text("")]
    parts.append(Text(updated_line(snap), style="dim"))
    return Group(*parts)


# ------------------------------------------------------------------ the command


def info_command(
    models: Annotated[list[str] | None, typer.Argument(help="Show only these models (default: all)")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            "--url",
            "-u",
            help=f"Redis URL (env QUEUECHAT_REDIS_URL; default: the running `queuechat up`'s, else {DEFAULT_URL})",
        ),
    ] = None,
    key_prefix: Annotated[
        str | None, typer.Option(help="Key prefix of the deployment (env QUEUECHAT_KEY_PREFIX; default: qc)")
    ] = None,
    interval: Annotated[
        float | None, typer.Option("--interval", "-i", min=0.1, help="Redraw every N seconds until Ctrl-C")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", "-r", help="Plain key=value lines, no bars or colours")] = False,
    only_queues: Annotated[bool, typer.Option("--only-queues", "-Q", help="Show only the queues")] = False,
    only_workers: Annotated[bool, typer.Option("--only-workers", "-W", help="Show only the workers")] = False,
    by_model: Annotated[bool, typer.Option("--by-model", "-R", help="List the workers of each model")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per snapshot")] = False,
) -> None:
    """Show the model queues and the workers serving them."""
    import redis

    from broker.connection import sync_client
    from broker.keys import Keys
    from broker.monitor import snapshot
    from broker.settings import Settings

    # the environment is read in one place, the settings; the flags take precedence
    settings = Settings.load(url)
    if key_prefix:
        settings = settings.model_copy(update={"key_prefix": key_prefix})
    redis_url = settings.redis_url or DEFAULT_URL
    keys = Keys(settings.key_prefix)
    try:
        # Every command info sends is cheap: a Redis that takes seconds to answer is as good as down.
        client = sync_client(redis_url, command_timeout=INFO_COMMAND_TIMEOUT)
    except ValueError as exc:  # redis-py's answer to a URL without a redis://, rediss:// or unix:// scheme
        print(f"queuechat info: invalid Redis URL {redact(redis_url)}: {exc}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    show = {"queues": not only_workers or only_queues, "workers": not only_queues or only_workers, "by_model": by_model}
    console = Console(highlight=False)

    def take() -> Snapshot:
        return snapshot(
            client,
            keys,
            models or (),
            with_queues=show["queues"] or by_model,
            with_batches=show["queues"],
            with_logs=show["queues"],
            with_keys=show["queues"],
        )

    def emit(snap: Snapshot) -> None:
        if as_json:
            print(snap.model_dump_json(), flush=True)
        elif raw:
            print(render_raw(snap, **show), flush=True)
        else:
            console.print(render_rich(snap, **show, width=console.width))

    try:
        first = take()
    except (redis.RedisError, OSError) as exc:
        print(f"queuechat info: {problem(exc, redis_url)}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    if interval is None:
        emit(first)
        return
    try:
        if raw or as_json or not console.is_terminal:
            emit(first)
            while True:
                time.sleep(interval)
                emit(_retrying(take, redis_url))
        else:
            with Live(render_rich(first, **show, width=console.width), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    try:
                        live.update(render_rich(take(), **show, width=console.width), refresh=True)
                    except (redis.RedisError, OSError) as exc:
                        # keep watching through a Redis restart instead of dying in the middle of it
                        live.update(Text(problem(exc, redis_url), style="red"), refresh=True)
    except KeyboardInterrupt:
        return


def _retrying(take: Callable[[], Snapshot], redis_url: str) -> Snapshot:
    """The next snapshot for line-oriented output, waiting out a Redis that went away (one line per attempt)."""
    import redis

    while True:
        try:
            return take()
        except (redis.RedisError, OSError) as exc:
            print(f"queuechat info: {problem(exc, redis_url)}", file=sys.stderr, flush=True)
            time.sleep(1.0)
