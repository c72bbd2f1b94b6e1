"""Redis clients with the timeouts the protocol relies on: a dead Redis must fail fast, never hang.

A URL is either a plain Redis URL (``redis://``, ``rediss://``, ``unix://``) or a Sentinel URL, which names the
sentinels and the monitored service instead of one server::

    redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]...]/service[/db][?option=value...]
    rediss+sentinel://...   (TLS to the sentinels and to the data nodes)

A Redis Cluster URL names some of the cluster's nodes (the client learns the others from them)::

    redis+cluster://[[user]:password@]host1:port[,host2:port...][?option=value...]
    rediss+cluster://...   (TLS to every node)

and gives redis-py's cluster clients (:class:`redis.cluster.RedisCluster` and its asyncio twin), which send each
command to the node of its key's slot and follow the cluster's changes (MOVED, failovers). They have the commands
of a plain client, so they are handed around as one (``redis.Redis``); what must differ on a cluster (sharded
pub/sub, reading the streams of each slot apart, no cross-slot MGET) asks :func:`is_cluster`.

The user and password are the data nodes'; ``sentinel_username`` / ``sentinel_password`` in the query are the
sentinels' own (they default to none: sentinels usually have no ACL). Other query options (``ssl_ca_certs``, ...)
go to every connection, as in redis-py's URLs. A Sentinel client asks the sentinels for the current primary
whenever it connects, and a connection to a primary that was demoted fails and reconnects, so every process
follows a failover without a restart; the retries with backoff that survive a Redis restart cover the gap.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster as cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel
from redis.sentinel import SentinelConnectionPool as SentinelPool

# Connecting to a dead Redis must give up quickly so front servers answer 503 at once.
CONNECT_TIMEOUT = 1.0
# Plain commands are sub-millisecond; anything this slow means Redis is in trouble.
COMMAND_TIMEOUT = 5.0


# A pooled connection that idled through a Redis restart (or a Sentinel failover) fails its next command with
# "Connection closed by server" although the server is back: the command is tried once more on a new connection.
# Only connection errors, never timeouts, whose command may have run; a Redis that is really down fails the retry
# at once too (connection refused), so an outage is still a fast 503.
def _retry_once() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def _async_retry_once() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379
# Connections of a front server to each cluster node (the asyncio cluster client has no waiting pool: past this a
# command fails, so it is set well above what one node is asked at once).
CLUSTER_MAX_CONNECTIONS = 1024
# Query options that are numbers or flags; the rest stay strings (paths, names).
_INT_OPTIONS = {"socket_keepalive", "max_connections", "health_check_interval"}
_FLOAT_OPTIONS = {"socket_timeout", "socket_connect_timeout"}


class BadRedisUrl(ValueError):
    """A Redis URL that cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True)
class SentinelUrl:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def node_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the data nodes (primary and replicas)."""
        kwargs: dict[str, Any] = {"db": self.db, **self.options}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.ssl:
            kwargs["ssl"] = True
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the sentinels themselves."""
        kwargs: dict[str, Any] = {
            k: v for k, v in self.options.items() if k.startswith("ssl_") or k.startswith("socket_")
        }
        kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
        kwargs.setdefault("socket_timeout", CONNECT_TIMEOUT)
        if self.sentinel_username:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        if self.ssl:
            kwargs["ssl"] = True
        return kwargs


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise BadRedisUrl(f"not a Sentinel URL (redis+sentinel://host:port[,host:port]/service[/db]): {url!r}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, colon, password = userinfo.partition(":")
    sentinels = [_host_port(part, url) for part in hosts.split(",") if part.strip()]
    if not sentinels:
        raise BadRedisUrl(f"a Sentinel URL names at least one sentinel host: {url!r}")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise BadRedisUrl(f"a Sentinel URL's path is /service or /service/db: {url!r}")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise BadRedisUrl(f"the database in a Sentinel URL is a number: {url!r}") from None
    options: dict[str, Any] = {}
    sentinel_auth: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ("sentinel_username", "sentinel_password"):
            sentinel_auth[key] = value
        elif key == "db":
            db = int(value)
        else:
            options[key] = _option(key, value)
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=db,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        ssl=SENTINEL_SCHEMES[scheme.lower()],
        sentinel_username=sentinel_auth.get("sentinel_username") or None,
        sentinel_password=sentinel_auth.get("sentinel_password") or None,
        options=options,
    )


@dataclass(frozen=True)
class ClusterUrl:
    """What a ``redis+cluster://`` URL says."""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def node_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.options)
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.ssl:
            kwargs["ssl"] = True
        return kwargs


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterUrl:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise BadRedisUrl(f"not a Redis Cluster URL (redis+cluster://host:port[,host:port]): {url!r}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):  # a cluster has database 0 only
        raise BadRedisUrl(f"a Redis Cluster has no databases but 0: {url!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, colon, password = userinfo.partition(":")
    nodes = [_host_port(part, url, DEFAULT_REDIS_PORT) for part in hosts.split(",") if part.strip()]
    if not nodes:
        raise BadRedisUrl(f"a Redis Cluster URL names at least one node: {url!r}")
    options = {key: _option(key, value) for key, value in parse_qsl(query, keep_blank_values=True)}
    return ClusterUrl(
        nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        ssl=CLUSTER_SCHEMES[scheme.lower()],
        options=options,
    )


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (or a pipeline of it) talks to a Redis Cluster."""
    return isinstance(
        client, cluster.RedisCluster | cluster.ClusterPipeline | acluster.RedisCluster | acluster.ClusterPipeline
    )


def _host_port(part: str, url: str, default_port: int = DEFAULT_SENTINEL_PORT) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [::1]:26379
        host, _, port = part[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise BadRedisUrl(f"bad address {part!r} in {url!r}") from None


def _option(key: str, value: str) -> Any:
    if key in _INT_OPTIONS:
        return int(value)
    if key in _FLOAT_OPTIONS:
        return float(value)
    if value.lower() in ("true", "false") and not key.startswith("ssl_ca"):
        return value.lower() == "true"
    return value


def sync_client(url: str, *, command_timeout: float | None = COMMAND_TIMEOUT) -> redis.Redis:
    """A blocking client. Workers that block in XREADGROUP pass a command_timeout above their block time."""
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": command_timeout,
        "health_check_interval": 30,
        "retry": _retry_once(),
    }
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        # redis-py's sentinel module is not annotated, hence the ignores on its calls
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=target.sentinel_kwargs(), **timeouts)  # type: ignore[no-untyped-call]
        master: redis.Redis = sentinel.master_for(target.service, redis_class=redis.Redis, **target.node_kwargs())  # type: ignore[no-untyped-call]
        return master
    if is_cluster_url(url):
        nodes_of = parse_cluster_url(url)
        nodes = [cluster.ClusterNode(host, port) for host, port in nodes_of.nodes]  # type: ignore[no-untyped-call]
        # a cluster client has a plain client's commands: handed around as one (see the module's docstring)
        return cast(redis.Redis, cluster.RedisCluster(startup_nodes=nodes, **timeouts, **nodes_of.node_kwargs()))
    return redis.Redis.from_url(url, **timeouts)


# Connections of one front server. A burst of requests beyond it waits for a free connection (commands take well
# under a millisecond) instead of failing with "Too many connections", as a plain pool does at once: 1,000
# streams opened together got 744 errors that way.
MAX_CONNECTIONS = 256


class _BlockingSentinelPool(AsyncSentinelPool, aredis.BlockingConnectionPool):
    """The primary's connections from the sentinels, with the blocking pool's wait for a free connection."""


def async_client(url: str, *, command_timeout: float | None = COMMAND_TIMEOUT) -> aredis.Redis:
    pool_options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": command_timeout,
        "health_check_interval": 30,
        "max_connections": MAX_CONNECTIONS,
        "timeout": COMMAND_TIMEOUT,  # waiting for a free connection
        "retry": _async_retry_once(),
    }
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = AsyncSentinel(target.sentinels, sentinel_kwargs=target.sentinel_kwargs())  # type: ignore[no-untyped-call]
        client: aredis.Redis = sentinel.master_for(
            target.service,
            redis_class=aredis.Redis,
            connection_pool_class=_BlockingSentinelPool,
            **pool_options,
            **target.node_kwargs(),
        )
        return client
    if is_cluster_url(url):
        nodes_of = parse_cluster_url(url)
        return _async_cluster(nodes_of.nodes, command_timeout, nodes_of.node_kwargs())
    pool = aredis.BlockingConnectionPool.from_url(url, **pool_options)
    return aredis.Redis(connection_pool=pool)


# What identifies a sync client's server and credentials, to open an async client to the same place.
_SAME_SERVER = ("host", "port", "db", "username", "password", "path", "client_name")
_ASYNC_CLASSES: dict[type[Any], type[aredis.connection.AbstractConnection]] = {
    redis.connection.Connection: aredis.connection.Connection,
    redis.connection.SSLConnection: aredis.connection.SSLConnection,
    redis.connection.UnixDomainSocketConnection: aredis.connection.UnixDomainSocketConnection,
}


def async_client_like(client: redis.Redis, *, command_timeout: float | None = COMMAND_TIMEOUT) -> aredis.Redis:
    """An async client to the server ``client`` talks to, with the same credentials and TLS options (a batch run
    opens its producer from the connection of the rq job it is)."""
    if isinstance(client, cluster.RedisCluster):
        nodes = [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
        first = client.get_nodes()[0].redis_connection
        given = first.connection_pool.connection_kwargs if first is not None else {}
        same = {k: v for k, v in given.items() if k in ("username", "password") or k.startswith("ssl")}
        if first is not None and issubclass(first.connection_pool.connection_class, redis.connection.SSLConnection):
            same["ssl"] = True
        return _async_cluster(nodes, command_timeout, same)
    pool = client.connection_pool
    if isinstance(pool, SentinelPool):
        return _async_sentinel_client_like(pool, command_timeout)
    given = pool.connection_kwargs
    kwargs = {k: v for k, v in given.items() if k in _SAME_SERVER or k.startswith("ssl_")}
    connection_class = _ASYNC_CLASSES.get(pool.connection_class)
    if connection_class is None:  # never guess: a default would connect somewhere else without a word
        raise ValueError(f"cannot open an async client like one whose connections are {pool.connection_class}")
    async_pool = aredis.BlockingConnectionPool(
        connection_class=connection_class,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=command_timeout,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT,
        retry=_async_retry_once(),
        **kwargs,
    )
    return aredis.Redis(connection_pool=async_pool)


class _WarmedCluster(acluster.RedisCluster):
    """redis-py's asyncio cluster client, whose first command is sent alone, and before any pipeline: with redis-py
    8.1, several first commands at once, before the client had learnt the cluster, broke connections the others
    were using (``'NoneType' object has no attribute 'writelines'``, a script run twice by a retry). A pipeline made
    before the first command fails too (a future attached to a different loop): a process sends one command first
    (the API does at start)."""

    _warm = False
    _warming: asyncio.Lock | None = None

    async def _warm_up(self) -> None:
        if self._warm:
            return
        if self._warming is None:
            self._warming = asyncio.Lock()
        async with self._warming:
            if not self._warm:
                await acluster.RedisCluster.execute_command(self, "PING")
                self._warm = True

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self._warm_up()
        return await super().execute_command(*args, **kwargs)


def _async_cluster(nodes: list[tuple[str, int]], command_timeout: float | None, node: dict[str, Any]) -> aredis.Redis:
    client = _WarmedCluster(
        startup_nodes=[acluster.ClusterNode(host, port) for host, port in nodes],
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=command_timeout,
        max_connections=CLUSTER_MAX_CONNECTIONS,
        **node,
    )
    return cast(aredis.Redis, client)


def _async_sentinel_client_like(pool: SentinelPool, command_timeout: float | None) -> aredis.Redis:
    """The same sentinels, service and node credentials as a sync Sentinel client's pool."""
    manager = pool.sentinel_manager
    sentinels = [
        (str(s.connection_pool.connection_kwargs["host"]), int(s.connection_pool.connection_kwargs["port"]))
        for s in manager.sentinels
    ]
    node = {k: v for k, v in pool.connection_kwargs.items() if k in _SAME_SERVER or k.startswith("ssl")}
    for k in ("host", "port", "path"):  # a node's address comes from the sentinels
        node.pop(k, None)
    async_sentinel = AsyncSentinel(sentinels, sentinel_kwargs=dict(manager.sentinel_kwargs))  # type: ignore[no-untyped-call]
    client: aredis.Redis = async_sentinel.master_for(
        pool.service_name,
        redis_class=aredis.Redis,
        connection_pool_class=_BlockingSentinelPool,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=command_timeout,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT,
        retry=_async_retry_once(),
        **node,
    )
    return client
