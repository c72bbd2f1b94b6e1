"""Who is serving what: the worker cards in ``{p}:workers`` and their TTL heartbeat keys.

A worker is alive exactly while its heartbeat key exists. Readers treat a card without a key as dead and prune it.
A model is *known* while its job stream exists (workers create it); it is *live* while a live worker serves it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import redis
import redis.asyncio as aredis
from pydantic import BaseModel, Field

from broker.decode import text, texts
from broker.keys import Keys

log = logging.getLogger(__name__)

# How long a cleanly departed worker's mark is kept: far longer than a takeover of its jobs takes, even after a
# broker outage, and short enough that the marks of a fleet's restarts do not pile up.
LEFT_MARK_TTL_S = 3600


class WorkerCard(BaseModel):
    id: str
    models: list[str]
    host: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    device: str = "cpu"
    slots: int = 1
    started: float = Field(default_factory=time.time)
    version: str = ""
    max_model_len: int | None = None
    embeddings: bool = False  # an embeddings worker: it serves /v1/embeddings, not chat or completions
    reasoning_parser: str | None = None  # --reasoning-parser
    tool_call_parser: str | None = None  # --tool-call-parser, as chosen from the chat template with "auto"


# The state of a worker whose engine stopped making progress: its jobs are taken over as a dead worker's are.
WEDGED = "wedged"


class WorkerStatus(BaseModel):
    """The live part of a worker, refreshed with every heartbeat."""

    state: str = "idle"  # idle | busy | draining | wedged
    running: int = 0
    free_slots: int = 0
    tokens_per_s: float = 0.0
    completed: int = 0
    failed: int = 0
    at: float = Field(default_factory=time.time)
    # The stream entry ids of the jobs it runs: an entry pending to a live worker that is not among them was lost
    # on its way (an XREADGROUP reply that never arrived) and is taken over. None (an older worker): never taken.
    holding: list[str] | None = None


class LiveWorker(BaseModel):
    card: WorkerCard
    status: WorkerStatus


def status_of(beat: bytes | str) -> WorkerStatus:
    """A heartbeat key's value; one that cannot be read counts as a plain live worker (never taken over for it)."""
    try:
        return WorkerStatus.model_validate_json(beat)
    except ValueError:
        return WorkerStatus()


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


def heartbeat_keys(keys: Keys, cards: dict[Any, Any]) -> list[str]:
    """The heartbeat keys of the registry's cards (an HGETALL of ``keys.workers``), in the cards' order."""
    return [keys.heartbeat(w) for w in texts(cards)]


def split_registry(cards: dict[Any, Any], beats: list[Any]) -> tuple[list[LiveWorker], list[str]]:
    """The registry's one parser: live workers and the ids of cards whose heartbeat expired, from an HGETALL of the
    registry and an MGET of its :func:`heartbeat_keys`. Readers that must not write (the info monitor, metrics
    scrapes, probes) fetch both in their own round trips; the others prune the expired cards after."""
    live: list[LiveWorker] = []
    dead: list[str] = []
    for (worker_id, card_json), beat in zip(cards.items(), beats, strict=True):
        wid = text(worker_id)
        if beat is None:
            dead.append(wid)
            continue
        try:
            live.append(
                LiveWorker(
                    card=WorkerCard.model_validate_json(card_json),
                    status=WorkerStatus.model_validate_json(beat),
                )
            )
        except ValueError:
            log.warning("ignoring malformed registry entry for worker %s", wid)
    return live, dead


def models_of(workers: list[LiveWorker]) -> dict[str, list[LiveWorker]]:
    by_model: dict[str, list[LiveWorker]] = {}
    for worker in workers:
        for model in worker.card.models:
            by_model.setdefault(model, []).append(worker)
    return by_model


class WorkerRegistration:
    """A worker's own entry: register once, heartbeat every interval, deregister on the way out."""

    def __init__(self, client: redis.Redis, keys: Keys, card: WorkerCard, ttl: float) -> None:
        self.client = client
        self.keys = keys
        self.card = card
        self.ttl_ms = int(ttl * 1000)

    def heartbeat(self, status: WorkerStatus) -> None:
        """One round trip: write the card (it may have been pruned while Redis was away) and refresh the TTL key."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.workers, self.card.id, self.card.model_dump_json())
        pipe.set(self.keys.heartbeat(self.card.id), status.model_dump_json(), px=self.ttl_ms)
        pipe.execute()

    def deregister(self) -> None:
        """Leave cleanly: what this worker still holds was handed back, so whoever takes it over does not count a
        death against those jobs (see :meth:`broker.takeover.Takeover.reclaim`)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.left(self.card.id), "1", ex=LEFT_MARK_TTL_S)
        pipe.hdel(self.keys.workers, self.card.id)
        pipe.delete(self.keys.heartbeat(self.card.id))
        pipe.execute()


def live_workers(client: redis.Redis, keys: Keys) -> list[LiveWorker]:
    """The live workers, pruning the cards of dead ones (for workers and commands: a sync client)."""
    cards = client.hgetall(keys.workers)
    live, dead = split_registry(cards, client.mget(heartbeat_keys(keys, cards)) if cards else [])
    if dead:
        client.hdel(keys.workers, *dead)
    return live


async def live_workers_async(client: aredis.Redis, keys: Keys) -> list[LiveWorker]:
    """:func:`live_workers` for front servers (an async client): the same commands and parser, awaited."""
    cards = await client.hgetall(keys.workers)
    live, dead = split_registry(cards, await client.mget(heartbeat_keys(keys, cards)) if cards else [])
    if dead:
        await client.hdel(keys.workers, *dead)
    return live
