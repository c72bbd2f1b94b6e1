"""Redis replies decoded in one place: the parsers every reader of a record shares, sync or async.

A client made by :mod:`broker.connection` answers bytes. These turn replies into text and numbers once, for every
record: hashes, stream groups (XINFO GROUPS with XLEN), stream entries and pending entries (XPENDING). Each record's
own parser (the registry's :func:`broker.registry.split_registry`, a job's log :func:`broker.eventlog.parse_entries`,
a stored response, a batch or a file) is built on them and is the only code that reads that record's reply, so a
sync reader and an async one differ only in the awaited call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.keys import CONSUMER_GROUP


def text(value: Any) -> str:
    """A reply's bytes (or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(values: Iterable[Any] | None) -> list[str]:
    """A list reply (HKEYS, ZRANGE...) as text; an empty list for none."""
    return [text(v) for v in values or []]


def text_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash (HGETALL) as text keys and values."""
    return {text(k): text(v) for k, v in raw.items()}


def int_map(raw: Mapping[Any, Any] | None) -> dict[str, int]:
    """A hash of counters (HGETALL of a stats or usage hash) as text keys and integers."""
    return {text(k): int(v) for k, v in (raw or {}).items()}


def entry_fields(fields: Any) -> dict[str, Any]:
    """A stream entry's fields with text names and the values as Redis sent them (bytes), from a client's reply (a
    dict) or a script's (Redis leaves its field lists flat); none for a deleted entry."""
    if not fields:
        return {}
    if isinstance(fields, Mapping):
        return {text(k): v for k, v in fields.items()}
    return {text(k): v for k, v in zip(fields[::2], fields[1::2], strict=True)}


def group_info(reply: Any, name: str = CONSUMER_GROUP) -> dict[str, Any] | None:
    """One group from an XINFO GROUPS reply; None when the stream or the group does not exist (the reply is then an
    error, with ``raise_on_error=False``)."""
    if not isinstance(reply, list):
        return None
    for group in reply:
        if text(group.get("name", b"")) == name:
            return dict(group)
    return None


def waiting_of(group: Mapping[str, Any], length: int) -> int:
    """Entries the group has not delivered yet. Redis 7 reports the lag; it is None when deletions make it unknown
    (and on Redis 6.2). Acknowledged entries are deleted, so the stream then holds waiting plus pending entries."""
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    return max(length - int(group.get("pending", 0)), 0)


@dataclass(frozen=True)
class StreamLoad:
    """A job stream's backlog, from its XINFO GROUPS and XLEN replies read together."""

    grouped: bool  # the workers' group exists (a stream nobody has consumed from yet has none)
    running: int  # delivered to a worker, not yet acknowledged (the group's pending entries)
    waiting: int  # not yet delivered to any worker
    last_delivered: str  # the group's last delivered id: the entries after it wait ("0-0" without a group)


def stream_load(groups: Any, length: Any, name: str = CONSUMER_GROUP) -> StreamLoad:
    """A stream's load; a reply that is an error (no stream, no group) counts as nothing there."""
    size = length if isinstance(length, int) else 0
    group = group_info(groups, name)
    if group is None:
        return StreamLoad(grouped=False, running=0, waiting=size, last_delivered="0-0")
    return StreamLoad(
        grouped=True,
        running=int(group.get("pending", 0)),
        waiting=waiting_of(group, size),
        last_delivered=text(group.get("last-delivered-id", b"0-0")),
    )


@dataclass(frozen=True)
class Pending:
    """One entry of an XPENDING (extended form) reply."""

    entry_id: str
    consumer: str
    deliveries: int  # times delivered so far
    idle_ms: int  # since its last delivery


def pending_entries(reply: Iterable[Mapping[str, Any]] | None) -> list[Pending]:
    return [
        Pending(
            entry_id=text(p["message_id"]),
            consumer=text(p["consumer"]),
            deliveries=int(p["times_delivered"]),
            idle_ms=int(p["time_since_delivered"]),
        )
        for p in reply or []
    ]


def idle_consumers(reply: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """The consumers of an XINFO CONSUMERS reply that hold no pending entry."""
    return [text(c["name"]) for c in reply or [] if int(c["pending"]) == 0]
