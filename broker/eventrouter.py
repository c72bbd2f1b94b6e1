"""The events of every in-flight job of a front server, on one pub/sub connection.

:class:`EventRouter` reads the connection in one task and hands each message to the queue of the job it belongs
to; :class:`ShardedEventRouter` does the same on a Redis Cluster, one router per node (sharded pub/sub). A job's
channel is subscribed, and the subscription confirmed by Redis, before the job is added to its stream, so no event
can be published unheard. When the connection drops, each job's queue gets :data:`CONNECTION_LOST`, and
:data:`RECONNECTED` once Redis confirmed its channel again: the job then reads what it missed from its log
(broker/jobevents.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from typing import Any

import redis.asyncio as aredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from broker.errors import BrokerUnavailable

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 2.0
EVENTS_CLIENT_NAME = "queuechat-events"
# Put in every job's queue when the event connection drops, and once Redis confirmed its channel again after a
# reconnect (never valid events: events are JSON objects).
CONNECTION_LOST = b""
RECONNECTED = b"\x00"


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
