"""What a Redis that went away and came back leaves behind in a front server: connections pooled before the restart
serve again at once, and a key that cannot be checked while Redis is down lets nothing in (a 503 in the API's error
shape, never a 500 or an unchecked request)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from broker.connection import async_client, sync_client
from broker.embedded import EmbeddedValkey
from broker.keys import Keys
from broker.settings import Settings
from broker.tenants import TenantLimits, TenantStore
from tests.conftest import ApiServer

SCRIPT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
def restartable() -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey()
    server.start()
    yield server
    server.stop()


def _restart(server: EmbeddedValkey) -> EmbeddedValkey:
    server.stop()
    again = EmbeddedValkey(port=server.port)
    again.start()
    return again


async def test_pooled_async_connections_serve_again_after_a_restart(restartable: EmbeddedValkey) -> None:
    client = async_client(restartable.url)
    script = client.register_script(SCRIPT)
    await asyncio.gather(*[script(keys=["n"]) for _ in range(16)])  # 16 connections in the pool
    server = _restart(restartable)
    try:
        replies = await asyncio.gather(*[script(keys=["n"]) for _ in range(16)], return_exceptions=True)
        assert [r for r in replies if isinstance(r, BaseException)] == []
        counts = sorted(int(r) for r in replies if not isinstance(r, BaseException))
        assert counts == list(range(1, 17))  # each ran once on the new (empty) server
    finally:
        await client.aclose()
        server.stop()


def test_a_pooled_sync_connection_serves_again_after_a_restart(restartable: EmbeddedValkey) -> None:
    client = sync_client(restartable.url)
    client.incr("n")
    server = _restart(restartable)
    try:
        assert client.incr("n") == 1
    finally:
        client.close()
        server.stop()


def test_keys_that_cannot_be_checked_let_nothing_in(
    restartable: EmbeddedValkey, start_api: Callable[..., ApiServer]
) -> None:
    settings = Settings(redis_url=restartable.url, key_prefix="outage")
    key = TenantStore(sync_client(restartable.url), Keys("outage")).add("team", TenantLimits(requests_per_minute=100))
    api = start_api(settings)
    bearer = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        assert http.post("/v1/chat/completions", json=body, headers=bearer).status_code != 401  # the key is known
        restartable.stop()
        for headers in (bearer, {}, {"Authorization": "Bearer not-a-key"}):
            response = http.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "broker_unavailable"
        response = http.post("/v1/messages", json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "error"
