"""Redis clients with the timeouts the protocol relies on: a dead Redis must fail fast, never hang."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis

# Connecting to a dead Redis must give up quickly so front servers answer 503 at once.
CONNECT_TIMEOUT = 1.0
# Plain commands are sub-millisecond; anything this slow means Redis is in trouble.
COMMAND_TIMEOUT = 5.0


def sync_client(url: str, *, command_timeout: float | None = COMMAND_TIMEOUT) -> redis.Redis:
    """A blocking client. Workers that block in XREADGROUP pass a command_timeout above their block time."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=command_timeout, health_check_interval=30
    )


# Connections of one front server. A burst of requests beyond it waits for a free connection (commands take well
# under a millisecond) instead of failing with "Too many connections", as a plain pool does at once: 1,000
# streams opened together got 744 errors that way.
MAX_CONNECTIONS = 256


def async_client(url: str, *, command_timeout: float | None = COMMAND_TIMEOUT) -> aredis.Redis:
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=command_timeout,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT,  # waiting for a free connection
    )
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
    pool = client.connection_pool
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
        **kwargs,
    )
    return aredis.Redis(connection_pool=async_pool)
