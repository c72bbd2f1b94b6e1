"""The front servers' side of the protocol: submit a job, then iterate over its events.

One pub/sub connection per process carries the events of every in-flight job: :class:`EventRouter` reads it in
one task and hands each message to the queue of the job it belongs to. A job's channel is subscribed, and the
subscription confirmed by Redis, before the job is added to its stream, so no event can be published unheard.

Pub/sub is at most once: what is published while the connection is down never arrives. Every event is also in the
job's log (broker/eventlog.py), so after a gap in ``seq`` or a reconnect :class:`JobEvents` reads what it missed
from there; only a log that is gone (Redis restarted empty) still fails the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from broker import eventlog, fairness
from broker.connection import is_cluster
from broker.errors import (
    BrokerUnavailable,
    JobFailed,
    ModelNotFound,
    NoWorkerAvailable,
    QueueFull,
    RequestTimedOut,
)
from broker.keys import CONSUMER_GROUP, Keys, log_entry_id
from broker.registry import LiveWorker, alive_workers, models_of
from broker.schemas import Accepted, Delta, Done, Error, Job, JobKind, SamplingParams, parse_event
from broker.settings import Settings
from broker.tenants import current_tenant

log = logging.getLogger(__name__)

AnyEvent = Accepted | Delta | Done | Error
SUBSCRIBE_TIMEOUT = 2.0
EVENTS_CLIENT_NAME = "queuechat-events"
# How long a front server trusts its view of the live workers when admitting jobs (one lookup per second
# instead of three round trips per request). A job sent to a model whose last worker just died waits in its stream
# for a worker until its deadline.
LIVE_CACHE_SECONDS = 1.0
# Past LIVE_CACHE_SECONDS and up to this age, a request is answered from the cache while a lookup in the background
# renews it, so a steady trickle of requests (one a second: every one would find the cache just expired) never
# waits for the registry; older than this, the lookup is made before answering.
LIVE_CACHE_STALE_SECONDS = 5.0
# Put in every job's queue when the event connection drops, and once Redis confirmed its channel again after a
# reconnect (never valid events: events are JSON objects).
CONNECTION_LOST = b""
RECONNECTED = b"\x00"
# A hung-up client's mark for its job's worker lives this long past the job's deadline: a worker that reads the job
# from its queue any time before then skips it, one that reads it later drops it as expired.
CANCEL_MARK_SECONDS = 60


# What an event connection to a cluster node takes of the node's connection arguments: where it is and how to log
# in. Not the node's shared helpers (event dispatcher, maintenance handler, retry), which act on its pool's own
# connections.
_NODE_CONNECTION_ARGS = {"host", "port", "username", "password", "credential_provider", "db", "socket_connect_timeout"}


def _own_connection(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in _NODE_CONNECTION_ARGS or k.startswith("ssl")}


class EventRouter:
    """Multiplexes one pub/sub connection over all in-flight jobs of this process.

    One task reads the connection and hands each message to its job's queue; one task writes SUBSCRIBE and
    UNSUBSCRIBE commands, batching what piled up. Requests never touch the connection, so a request cancelled
    mid-command (a client that disconnects) cannot break the connection every other job shares. When the
    connection drops, the reader reconnects with backoff and subscribes again to every open channel.
    """

    def __init__(self, client: aredis.Redis, *, node: Any = None) -> None:
        """``node``: a cluster node (redis-py's asyncio ``ClusterNode``), whose shard's channels this router
        carries with sharded pub/sub (SSUBSCRIBE); see :class:`ShardedEventRouter`."""
        source = node if node is not None else client.connection_pool
        self.sharded = node is not None
        self._verbs = {b"SUBSCRIBE": b"SSUBSCRIBE", b"UNSUBSCRIBE": b"SUNSUBSCRIBE"} if self.sharded else {}
        self._message, self._subscribed = (b"smessage", b"ssubscribe") if self.sharded else (b"message", b"subscribe")
        self.client_name = f"{EVENTS_CLIENT_NAME}-{os.getpid()}-{os.urandom(3).hex()}"
        # No read timeout: the connection idles between jobs. A dead peer shows up as a reset or via keepalive.
        # No health check either: redis-py's PING-before-command would read a reply that the reader task owns.
        self._connection_kwargs = {
            **(_own_connection(source.connection_kwargs) if self.sharded else source.connection_kwargs),
            "socket_timeout": None,
            "socket_keepalive": True,
            "health_check_interval": 0,
            # so operators find it in CLIENT LIST; the suffix tells the connections of several processes apart
            "client_name": self.client_name,
        }
        self._connection_class = source.connection_class
        self._conn: Any = None
        self._connected = asyncio.Event()
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._commands: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._down = False  # the last connection attempt failed: refuse new subscriptions at once
        self._lost = False  # the connection dropped since it was last up: channels subscribed again get RECONNECTED
        self._resubscribing: set[bytes] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _ensure_tasks(self) -> None:
        if not self._tasks or any(t.done() for t in self._tasks):
            for task in self._tasks:
                task.cancel()
            self._tasks = [
                asyncio.create_task(self._read_forever(), name="queuechat-events-reader"),
                asyncio.create_task(self._write_forever(), name="queuechat-events-writer"),
            ]

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes]:
        """Subscribe and return once Redis has confirmed the subscription."""
        self._ensure_tasks()
        if self._down:
            raise BrokerUnavailable("the broker is unreachable (the event connection is down)")
        key = channel.encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[key] = queue
        self._confirmations[key] = confirmed
        self._commands.put_nowait((b"SUBSCRIBE", key))
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):  # not wait_for, which can drop a cancellation (3.11)
                await asyncio.shield(confirmed)
        except TimeoutError as exc:
            self.unsubscribe(channel)
            raise BrokerUnavailable("the broker did not confirm the subscription to the job's events") from exc
        except BaseException:
            self.unsubscribe(channel)
            raise
        finally:
            self._confirmations.pop(key, None)
        return queue

    def unsubscribe(self, channel: str) -> None:
        """Forget the channel now; the UNSUBSCRIBE itself is sent in the background."""
        key = channel.encode()
        if self._queues.pop(key, None) is not None:
            self._commands.put_nowait((b"UNSUBSCRIBE", key))

    async def _connect(self) -> None:
        conn = self._connection_class(**self._connection_kwargs)
        await conn.connect()
        if self._queues:
            if self._lost:
                self._resubscribing = set(self._queues)
            await self._send(conn, b"SUBSCRIBE", list(self._queues))
        self._lost = False
        self._conn = conn
        self._down = False
        self._connected.set()

    async def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._connect()
                backoff = 0.05
                while True:
                    self._dispatch(await self._conn.read_response(timeout=math.inf, push_request=True))
            except (RedisError, OSError) as exc:
                self._connected.clear()
                self._down = True
                self._lost = True
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.disconnect()
                log.warning("event connection lost (%s); reconnecting in %.2fs", exc, backoff)
                for fut in self._confirmations.values():
                    if not fut.done():
                        fut.set_exception(BrokerUnavailable(f"the broker is unreachable: {exc}"))
                # Events published while the connection is down never arrive here: each job in flight is told, and
                # reads them from its log once its channel is subscribed again (RECONNECTED).
                for queue in self._queues.values():
                    queue.put_nowait(CONNECTION_LOST)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _write_forever(self) -> None:
        while True:
            command, first = await self._commands.get()
            batch: dict[bytes, list[bytes]] = {command: [first]}
            while not self._commands.empty():  # coalesce what piled up into one command of each kind
                more, channel = self._commands.get_nowait()
                batch.setdefault(more, []).append(channel)
            await self._connected.wait()
            for verb, channels in batch.items():
                try:
                    await self._send(self._conn, verb, channels)
                except (RedisError, OSError) as exc:
                    # the reader notices the broken connection too, reconnects and subscribes again
                    log.warning("%s failed: %s", verb.decode(), exc)

    async def _send(self, conn: Any, verb: bytes, channels: list[bytes]) -> None:
        """One (UN)SUBSCRIBE for the channels; sharded, one per slot (SSUBSCRIBE's channels share a slot)."""
        if not self.sharded:
            await conn.send_command(verb, *channels)
            return
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        for same_slot in by_slot.values():
            await conn.send_command(self._verbs[verb], *same_slot)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel = reply[0], reply[1]
        if kind == self._message:
            queue = self._queues.get(channel)
            if queue is not None:
                queue.put_nowait(reply[2])
        elif kind == self._subscribed:
            confirmed = self._confirmations.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            if channel in self._resubscribing:
                self._resubscribing.discard(channel)
                queue = self._queues.get(channel)
                if queue is not None:
                    queue.put_nowait(RECONNECTED)

    @property
    def channels(self) -> int:
        return len(self._queues)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()


class ShardedEventRouter:
    """The events of a Redis Cluster: sharded pub/sub, one :class:`EventRouter` (one connection) per node, each
    carrying the channels of the slots that node serves. (A classic PUBLISH on a cluster reaches every node, so
    each token would cost more with every node added; a sharded one stays on the shard of the job's slot.)

    A channel's node is looked up when it is subscribed. A slot that moves to another node (resharding, or a
    failover) is not followed by the channels already open there: their jobs read their log once the connection
    drops, as for any lost connection, and new jobs go to the new node."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client: Any = client  # redis-py's asyncio RedisCluster
        self._routers: dict[str, EventRouter] = {}
        self._router_of: dict[str, EventRouter] = {}

    @property
    def connected(self) -> bool:
        return all(router.connected for router in self._routers.values())

    @property
    def channels(self) -> int:
        return len(self._router_of)

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes]:
        try:
            await self.client.initialize()  # the slot map, once (a no-op after)
            node = self.client.get_node_from_key(channel)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
        router = self._routers.get(node.name)
        if router is None:
            router = self._routers[node.name] = EventRouter(self.client, node=node)
        self._router_of[channel] = router
        try:
            return await router.subscribe(channel)
        except BaseException:
            self._router_of.pop(channel, None)
            raise

    def unsubscribe(self, channel: str) -> None:
        router = self._router_of.pop(channel, None)
        if router is not None:
            router.unsubscribe(channel)

    async def close(self) -> None:
        for router in self._routers.values():
            await router.close()


class JobEvents:
    """The events of one submitted job, in order. Iteration ends after ``done`` for every choice, or raises
    :class:`JobFailed` on an ``error`` event. Always :meth:`close` (or use ``async with``).

    Events arrive on the job's channel; an event seen twice (a catch-up overlapping the live channel) is dropped,
    and a gap in ``seq`` or a lost connection is filled from the job's log, so only a log that is gone fails the
    job (``events_lost``). While the connection to Redis is down the job waits up to ``outage_grace`` seconds.

    When the job's worker dies, another worker continues the job from the tokens already sent: its ``accepted``
    carries the next ``seq`` (and a higher attempt) and is passed over, and the stream goes on. A worker that
    cannot continue it (its log was lost) runs it again from the start: an ``accepted`` with ``seq`` 0, passed
    through (the caller drops what it gathered so far) unless the caller has marked the job :attr:`committed` (a
    stream that already sent text to its client): then it is a ``worker_lost`` error. While no event arrives the
    job's model is checked every ``watch_interval`` seconds, so a client learns of no worker left in seconds, or,
    when its model has a wait for a worker (``wait_for_worker``: scale from zero), once none started within it.
    """

    def __init__(self, producer: Producer, job: Job, queue: asyncio.Queue[bytes]) -> None:
        self.job = job
        self._producer = producer
        self._queue = queue
        self._next_seq = 0
        self._open_choices = job.params.n
        self._closed = False
        self._backlog: deque[AnyEvent] = deque()  # read from the log, to be taken before the channel
        self._catch_up = False  # the log must be read before the next event from the channel
        self._lost_at: float | None = None  # the event connection was lost then, and is not back yet
        self._failing_since: float | None = None  # commands to Redis have failed since then
        self.queued = False  # the job is in its stream (so it has a log)
        self.pending_first: AnyEvent | None = None  # the first event, once a front server has waited for it
        self.worker: str | None = None  # the worker running the job, from its ``accepted``
        self.attempt = 0
        self.continued = 0  # times another worker continued the job mid-stream
        self.caught_up = 0  # events read from the log because the channel missed them
        self.committed = False  # set by the caller once output has reached the client
        # Seconds the job may wait for a worker of its model to start while none is live (scale from zero), and
        # since when it has been waiting (monotonic; None while a worker is live).
        self.worker_wait = 0.0
        self.waiting_since: float | None = None

    async def __aenter__(self) -> JobEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[AnyEvent]:
        return self._iterate()

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last event taken (-1 before the first)."""
        return self._next_seq - 1

    def catch_up_from_start(self) -> None:
        """Read the whole log before anything else: for a front server attaching to a job it did not submit."""
        self.queued = True
        self._catch_up = True

    async def next_event(self) -> AnyEvent:
        """The next event; raises :class:`JobFailed` for an error event, :class:`RequestTimedOut` at the deadline,
        :class:`BrokerUnavailable` when the broker stayed unreachable past the outage grace."""
        while True:
            if self._backlog:
                event = self._take(self._backlog.popleft())
                if event is not None:
                    return event
                continue
            remaining = self.job.deadline - time.time()
            if remaining <= 0:
                raise RequestTimedOut(f"job {self.job.id} passed its deadline")
            if self._catch_up and self._lost_at is None:
                await self._read_log()
                continue
            if not self._queue.empty():  # under load the event is often there already: no timer to arm
                raw = self._queue.get_nowait()
            else:
                try:
                    wait = min(remaining, self._producer.settings.heartbeat_interval)
                    if self.waiting_since is not None:  # look again when the wait for a worker ends
                        wait = min(wait, max(self.waiting_since + self.worker_wait - time.monotonic(), 0.01))
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that arrives as
                    # the awaited get completes (an event per token makes that common), so a request whose client
                    # hung up went on to the end of its answer
                    async with asyncio.timeout(wait):
                        raw = await self._queue.get()
                except TimeoutError:
                    await self._check_worker()
                    continue
            event = self._arrived(raw)
            if event is not None:
                return event

    def _arrived(self, raw: bytes) -> AnyEvent | None:
        if raw == CONNECTION_LOST:
            self._outage()
            return None
        if raw == RECONNECTED:
            self._lost_at = None
            self._catch_up = True
            return None
        try:
            event = parse_event(raw)
        except ValueError as exc:  # a worker of another version, or a bug: fail this job, never the server
            raise JobFailed(
                f"job {self.job.id} got an event it cannot read: {exc}", status=502, code="bad_event"
            ) from exc
        if self._catch_up and not isinstance(event, Error):
            return None  # the log read next has it too, in order
        return self._take(event)

    def _outage(self) -> None:
        """The event connection is down: fine for up to ``outage_grace`` seconds."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        self._within_grace(self._lost_at)

    def _failing(self) -> None:
        """A command to Redis failed: fine for up to ``outage_grace`` seconds of failures in a row."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._within_grace(self._failing_since)

    def _within_grace(self, since: float) -> None:
        if time.monotonic() - since >= self._producer.settings.outage_grace:
            raise BrokerUnavailable(f"the connection to the broker was lost while job {self.job.id} was running")

    def _take(self, event: AnyEvent) -> AnyEvent | None:
        """Apply one event in ``seq`` order: the event to hand on, or None for one that is not (a duplicate, the
        ``accepted`` of a continuation, an event past a gap that the log fills)."""
        if isinstance(event, Error):  # ends the job whoever sent it (a dead-letter notice has no place in seq)
            raise JobFailed(event.message, status=event.status, code=event.code, param=event.param)
        if isinstance(event, Accepted) and event.seq == 0 and self._next_seq > 0:
            if (event.worker, event.attempt) == (self.worker, self.attempt):
                return None  # the first accepted again
            self._restart(event)
            return event
        if event.seq < self._next_seq:
            return None  # seen already
        if event.seq > self._next_seq:
            self._catch_up = True  # missed some: the log has them
            return None
        self._next_seq += 1
        if isinstance(event, Accepted):
            if event.seq > 0:  # another worker continues the job where the last one stopped
                log.info("job %s continued by worker %s (attempt %d)", self.job.id, event.worker, event.attempt)
                self.worker, self.attempt = event.worker, event.attempt
                self.continued += 1
                return None
            self.worker, self.attempt = event.worker, event.attempt
        elif isinstance(event, Done):
            self._open_choices -= 1
        return event

    async def _read_log(self) -> None:
        """Put the events from ``_next_seq`` on, as the job's log has them, before anything from the channel."""
        producer = self._producer
        key = producer.keys.log(self.job.id)
        try:
            pipe = producer.client.pipeline(transaction=False)
            pipe.exists(key)
            pipe.xrange(key, min=log_entry_id(self._next_seq))
            exists, entries = await pipe.execute()
        except (RedisError, OSError):
            self._failing()
            await asyncio.sleep(0.2)
            return
        self._failing_since = None
        self._catch_up = False
        read = eventlog.parse_entries(entries)
        if not exists:
            if self._next_seq == 0 and not self.queued:
                return  # nothing sent yet (a reconnect while the job was being submitted)
            raise self._events_lost()
        ordered = [e for e in read.events if not isinstance(e, Error)]
        if ordered and ordered[0].seq != self._next_seq:
            raise self._events_lost()
        self.caught_up += len(read.events)
        self._backlog.extend(read.events)

    def _events_lost(self) -> JobFailed:
        return JobFailed(
            f"events of job {self.job.id} were lost (the broker lost the job's event log); retry the request",
            status=503,
            code="events_lost",
        )

    def _restart(self, event: Accepted) -> None:
        if self.committed:
            raise self._worker_lost()
        log.warning("job %s restarted on worker %s (attempt %d)", self.job.id, event.worker, event.attempt)
        self._next_seq = 1
        self._open_choices = self.job.params.n
        self.worker, self.attempt = event.worker, event.attempt

    def _worker_lost(self) -> JobFailed:
        return JobFailed(
            f"the worker running job {self.job.id} was lost after part of the answer had been sent, and the job "
            "could not be continued; retry the request",
            status=503,
            code="worker_lost",
        )

    async def _check_worker(self) -> None:
        """Called when no event came for a while: fail now if the job can no longer finish."""
        if self._lost_at is not None:
            self._outage()
            return
        producer = self._producer
        try:
            if self.worker is not None and await producer.client.exists(producer.keys.heartbeat(self.worker)):
                return
            live = await producer._live_models_cached(self.job.model)
        except (RedisError, OSError) as exc:
            if producer.settings.outage_grace <= 0:
                raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
            self._failing()
            return
        self._failing_since = None
        if self.job.model in live:
            # A live worker will take the job over (or start it, if it is still queued): keep waiting.
            self.waiting_since = None
            return
        if self.worker_wait <= 0:
            raise NoWorkerAvailable(f"no worker is serving model {self.job.model!r} any more")
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since >= self.worker_wait:
            raise self._no_worker_started()

    def _no_worker_started(self) -> NoWorkerAvailable:
        """The wait for a worker is over: the job stays in its stream, marked so that a worker arriving later
        skips it instead of running it for nobody."""
        self._producer.mark_cancelled(self.job.id, self.job.deadline, at_once=True)
        return NoWorkerAvailable(
            f"no worker of model {self.job.model!r} started within {self.worker_wait:g} s (the wait for a worker, "
            "QUEUECHAT_WAIT_FOR_WORKER); retry later"
        )

    @property
    def finished(self) -> bool:
        return self._open_choices <= 0

    async def _iterate(self) -> AsyncIterator[AnyEvent]:
        while not self.finished:
            yield await self.next_event()

    def close(self) -> None:
        """Stop listening. Synchronous, so it is safe in a ``finally`` of a cancelled request. A job left before
        its end is marked cancelled, so its worker stops it at once (not only after the orphan grace)."""
        if not self._closed:
            self._closed = True
            self._producer.router.unsubscribe(self._producer.keys.events(self.job.id))
            if self.queued and not self.finished:
                self._producer.mark_cancelled(self.job.id, self.job.deadline)


class Producer:
    """Submits jobs for front servers (the API, the web UI)."""

    def __init__(self, client: aredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.cluster = is_cluster(client)
        self.router: EventRouter | ShardedEventRouter = (
            ShardedEventRouter(client) if self.cluster else EventRouter(client)
        )
        self._admit = client.register_script(fairness.ADMIT_SCRIPT)
        self._live_cache: tuple[float, dict[str, list[LiveWorker]]] = (0.0, {})
        self._live_refresh: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def live_workers(self) -> list[LiveWorker]:
        try:
            return await alive_workers(self.client, self.keys)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc

    async def live_models(self) -> dict[str, list[LiveWorker]]:
        return models_of(await self.live_workers())

    async def _live_models_cached(self, model: str) -> dict[str, list[LiveWorker]]:
        """The live models, re-read at most once a second while ``model`` is among them. Only the positive answer
        is cached: a model missing from the cache is always looked up afresh before a 404 or 503."""
        at, live = self._live_cache
        age = time.monotonic() - at
        if model in live and age < LIVE_CACHE_SECONDS:
            return live
        if model in live and age < LIVE_CACHE_STALE_SECONDS:
            if self._live_refresh is None or self._live_refresh.done():
                self._live_refresh = asyncio.create_task(self._refresh_live(), name="queuechat-live-workers")
            return live
        return await self._refresh_live_now()

    async def _refresh_live_now(self) -> dict[str, list[LiveWorker]]:
        live = await self.live_models()
        self._live_cache = (time.monotonic(), live)
        return live

    async def _refresh_live(self) -> None:
        try:
            await self._refresh_live_now()
        except BrokerUnavailable as exc:  # the next request looks again; its own commands report the outage
            log.debug("could not renew the live workers: %s", exc)

    async def check_model(self, model: str) -> float:
        """Raise unless a live worker serves ``model``, or it is known and its jobs may wait for a worker to start
        (``wait_for_worker``): then return how many seconds they may wait (0.0 when a worker is live). (Whether
        its queue has room is checked as the job is added, in the same script.) A tenant's key limited to some
        models sees the others as absent.

        A model is known when its job stream exists (a worker created it, see the consumer's ``ensure_groups``) or
        when ``wait_for_worker`` names it: on a fresh Redis no worker has created the stream yet, so a deployment
        that scales to zero declares its models, and the stream and its group are created here, for the autoscaler
        to see the group's lag."""
        tenant = current_tenant.get()
        if tenant is not None and not tenant.allows(model):
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        live = await self._live_models_cached(model)
        if model in live:
            return 0.0
        wait = self.settings.wait_for_worker
        try:
            known = bool(await self.client.exists(self.keys.jobs(model)))
            if not known and wait.declares(model):
                await self._create_stream(self.keys.jobs(model))
                known = True
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
        if not known:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        if wait.seconds(model) <= 0:
            raise NoWorkerAvailable(f"no worker is serving model {model!r} right now")
        return wait.seconds(model)

    async def declare_models(self) -> None:
        """Create the streams of the models ``wait_for_worker`` declares, so that an autoscaler watching their
        group's lag finds it before the first request (best effort: a request creates its model's stream too)."""
        for model in self.settings.wait_for_worker.models:
            try:
                await self._create_stream(self.keys.jobs(model))
            except (RedisError, OSError) as exc:
                log.warning("could not create the job stream of declared model %r: %s", model, exc)
                return

    async def _create_stream(self, stream: str) -> None:
        """A job stream of a model and the workers' group on it, as a worker would create them (idempotent)."""
        try:
            await self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def max_model_len(self, model: str) -> int | None:
        """The longest context a live worker of ``model`` advertises (None when none says), from the cached view."""
        live = await self._live_models_cached(model)
        lengths = [w.card.max_model_len for w in live.get(model, []) if w.card.max_model_len]
        return max(lengths) if lengths else None

    async def submit(self, job: Job, *, low_priority: bool = False, resume: dict[str, Any] | None = None) -> JobEvents:
        """Check the model, subscribe to the job's channel, then queue the job (and begin its event log, in the
        same script). Returns its event iterator.

        ``low_priority`` queues it on the model's batch stream, which workers read only when no interactive job
        is waiting (the Batch API's lines). An interactive job of an API key (``current_tenant``), or of a priority
        other than 0, goes to that key's stream of that priority, which workers read by turns (broker/fairness.py).
        ``resume`` is kept in the log for a front server that resumes the job's stream for its client (see
        :meth:`attach`): who may, and how the stream was asked for."""
        worker_wait = await self.check_model(job.model)
        channel = self.keys.events(job.id)
        queue = await self.router.subscribe(channel)
        events = JobEvents(self, job, queue)
        events.worker_wait = self.settings.wait_for_worker.seconds(job.model)
        stream, entry, weight = self._stream_of(job, low_priority)
        if worker_wait > 0:
            events.waiting_since = time.monotonic()  # no worker is live: the wait for one begins now
            if low_priority:  # a batch line: the autoscaler reads the lag of the batch stream's group too
                try:
                    await self._create_stream(stream)
                except BaseException as exc:
                    events.close()
                    if isinstance(exc, RedisError | OSError):
                        raise BrokerUnavailable(f"cannot queue the job: {exc}") from exc
                    raise
        args: list[Any] = [self.settings.max_queue_len, self.settings.stream_maxlen, job.model_dump_json(), entry]
        args += [f"w:{weight[0]}", weight[1], CONSUMER_GROUP]
        keys = [stream, self.keys.jobs(job.model), self.keys.fair_streams(job.model), self.keys.fair_state(job.model)]
        if self.settings.event_log:
            keys.append(self.keys.log(job.id))
            args += [
                eventlog.meta_json(job.model, job.params.n, job.deadline, resume),
                eventlog.submission_ttl_ms(job.deadline, self.settings.event_log_ttl),
            ]
        try:
            backlog = int(await self._admit(keys=keys, args=args))
        except BaseException as exc:
            events.close()
            if isinstance(exc, RedisError | OSError):
                raise BrokerUnavailable(f"cannot queue the job: {exc}") from exc
            raise
        if backlog < 0:
            events.close()
            raise self._queue_full(job.model, -backlog - 1)
        events.queued = True
        return events

    def _stream_of(self, job: Job, low_priority: bool) -> tuple[str, str, tuple[str, int]]:
        """The stream a job is queued on, its registry entry ("" for the model's own streams) and its tenant's
        weight. Batch lines share the batch stream; an interactive job goes to its tenant's stream of its priority
        (see :mod:`broker.fairness`), a request without a key of priority 0 to the model's stream."""
        tenant = current_tenant.get()
        name = tenant.name if tenant is not None else fairness.DEFAULT_TENANT
        weight = (name, tenant.limits.weight if tenant is not None else 1)
        if low_priority:
            return self.keys.batch_jobs(job.model), "", weight
        if tenant is None and job.priority == 0:
            return self.keys.jobs(job.model), "", weight
        stream = self.keys.fair_jobs(job.model, name, job.priority)
        return stream, fairness.registry_entry(name, job.priority), weight

    async def job_log(self, job_id: str) -> eventlog.JobLog:
        """A job's event log as it is now (empty when it is gone)."""
        try:
            return eventlog.parse_entries(await self.client.xrange(self.keys.log(job_id)))
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc

    async def attach(self, job_id: str, meta: dict[str, Any]) -> JobEvents:
        """The events of a job another front server submitted, from its first (read back from its log) to its
        last (live): for a client resuming its stream here. ``meta`` is the log's record of the job."""
        job = Job(
            id=job_id,
            kind=JobKind.CHAT,
            model=str(meta.get("model", "")),
            params=SamplingParams(n=int(meta.get("n", 1))),
            deadline=float(meta.get("deadline", time.time())),
        )
        queue = await self.router.subscribe(self.keys.events(job_id))
        events = JobEvents(self, job, queue)
        events.catch_up_from_start()  # after the subscription: nothing published from now on is missed
        return events

    def mark_cancelled(self, job_id: str, deadline: float, *, at_once: bool = False) -> None:
        """Tell a job's worker its client hung up (in the background: called from synchronous cleanup). The mark
        lasts until the job's ``deadline``: a job still queued is skipped by whichever worker reads it. ``at_once``
        skips the hang-up grace (the client was answered: it cannot resume the stream)."""
        try:
            task = asyncio.get_running_loop().create_task(self._mark_cancelled(job_id, deadline, at_once))
        except RuntimeError:  # no loop: the process is ending, and the orphan grace stops the job
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mark_cancelled(self, job_id: str, deadline: float, at_once: bool) -> None:
        """After ``hangup_grace`` seconds, unless the client came back for its stream by then (on any replica)."""
        try:
            grace = 0.0 if at_once else self.settings.hangup_grace
            if grace > 0:
                await asyncio.sleep(grace)
                channel = self.keys.events(job_id)
                if self.cluster:
                    listening = await self.client.pubsub_shardnumsub(channel)
                else:
                    listening = await self.client.pubsub_numsub(channel)
                if listening and int(listening[0][1]) > 0:
                    return
            ttl = CANCEL_MARK_SECONDS + max(math.ceil(deadline - time.time()), 0)
            await self.client.set(self.keys.cancel(job_id), b"1", ex=ttl)
        except (RedisError, OSError) as exc:
            log.debug("could not mark job %s cancelled: %s", job_id, exc)

    def _queue_full(self, model: str, backlog: int) -> QueueFull:
        """A 429 whose Retry-After is the time for the backlog to drain one slot-full at a time (at least 1 s)."""
        _, live = self._live_cache
        slots = sum(w.card.slots for w in live.get(model, [])) or 1
        return QueueFull(
            f"the queue of model {model!r} is full ({backlog} jobs); retry later",
            retry_after=max(1, math.ceil(backlog / slots)),
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._live_refresh is not None:
            self._live_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._live_refresh
        await self.router.close()
        await self.client.aclose()
