"""Redis Sentinel: a ``redis+sentinel://`` URL, and a failover of the primary under load that every process follows
without a restart (a real primary, replica and three sentinels from Debian's redis-server, on loopback)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.connection import BadRedisUrl, async_client, async_client_like, parse_sentinel_url, sync_client
from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.sentinel_support import SentinelGroup, redis_server_binary

needs_redis_server = pytest.mark.skipif(redis_server_binary() is None, reason="Debian's redis-server is not installed")


def test_sentinel_url_is_parsed() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://worker:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]:26381/mymaster/2"
        "?sentinel_password=sp&ssl_ca_certs=/etc/ca.pem&socket_keepalive=1"
    )
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381)]
    assert (target.service, target.db, target.username, target.password) == ("mymaster", 2, "worker", "s@cret")
    assert target.ssl and target.sentinel_password == "sp"
    node = target.node_kwargs()
    assert node["ssl"] and node["ssl_ca_certs"] == "/etc/ca.pem" and node["password"] == "s@cret"
    sentinel = target.sentinel_kwargs()
    assert sentinel["password"] == "sp" and sentinel["ssl_ca_certs"] == "/etc/ca.pem" and "db" not in sentinel


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///mymaster",  # no sentinel
        "redis+sentinel://h1:26379",  # no service
        "redis+sentinel://h1:26379/mymaster/zero",  # bad db
        "redis+sentinel://h1:port/mymaster",  # bad port
        "redis+sentinel://h1/a/b/c",  # too deep
    ],
)
def test_bad_sentinel_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(BadRedisUrl):
        parse_sentinel_url(url)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    if redis_server_binary() is None:
        pytest.skip("Debian's redis-server is not installed")
    with SentinelGroup(tmp_path / "sentinel") as group:
        yield group


@needs_redis_server
async def test_clients_reach_the_primary_through_the_sentinels(sentinel_group: SentinelGroup) -> None:
    sync = sync_client(sentinel_group.url)
    sync.set("k", "v")
    assert sync.info("server")["tcp_port"] == sentinel_group.primary_port
    client = async_client(sentinel_group.url)
    try:
        assert await client.get("k") == b"v"
        assert (await client.info("server"))["tcp_port"] == sentinel_group.primary_port
    finally:
        await client.aclose()


@needs_redis_server
async def test_an_async_client_like_a_sentinel_client_follows_the_sentinels(sentinel_group: SentinelGroup) -> None:
    # a batch run opens its producer like its rq job's connection, which on Sentinel is a Sentinel client
    client = async_client_like(sync_client(sentinel_group.url))
    try:
        await client.set("like", "yes")
        assert (await client.info("server"))["tcp_port"] == sentinel_group.primary_port
    finally:
        await client.aclose()


@dataclass
class Outcome:
    started: float
    status: int | None  # None: no answer (the client's timeout, or the connection failed)
    body: Any = None


def load(base_url: str, stop: threading.Event, outcomes: list[Outcome], clients: int = 32) -> list[threading.Thread]:
    """``clients`` loops of short chat requests until ``stop``; each request's start and answer are recorded."""

    def one_client() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(
                        "/v1/chat/completions",
                        json={
                            "model": "tiny",
                            "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 4,
                            "temperature": 0,
                        },
                    )
                    outcomes.append(Outcome(started, r.status_code, r.json()))
                except httpx.HTTPError:
                    outcomes.append(Outcome(started, None))
                if outcomes[-1].status != 200:
                    time.sleep(0.2)  # a client backs off after an error rather than spinning

    threads = [threading.Thread(target=one_client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


@needs_redis_server
def test_failover_under_load_is_followed_without_restarts(
    sentinel_group: SentinelGroup,
    settings: Settings,
    start_worker: Callable[..., RunningWorker],
    start_api: Callable[..., ApiServer],
) -> None:
    on_sentinel = settings.model_copy(update={"redis_url": sentinel_group.url})
    worker = start_worker(settings_=on_sentinel)
    api = start_api(on_sentinel)
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])

    stop = threading.Event()
    outcomes: list[Outcome] = []
    threads = load(api.base_url, stop, outcomes)
    try:
        wait_for(lambda: sum(o.status == 200 for o in outcomes) >= 32, timeout=60)
        killed_at = time.monotonic()
        sentinel_group.kill(sentinel_group.primary_port)
        # the sentinels promote the replica; then every process must find it by itself
        wait_for(lambda: sentinel_group.current_primary_port() == sentinel_group.replica_port, timeout=30)
        wait_for(lambda: any(o.status == 200 and o.started > killed_at + 0.5 for o in outcomes), timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(40)

    assert not any(t.is_alive() for t in threads), "a request hung"
    failed = [o for o in outcomes if o.status != 200]
    in_flight = [o for o in failed if o.started < killed_at]
    print(
        f"{len(outcomes)} requests, {len(failed)} failed: {len(in_flight)} in flight at the kill, the rest sent "
        f"before the new primary was known; last failure sent {max(o.started for o in failed) - killed_at:.1f} s "
        "after the kill"
        if failed
        else f"{len(outcomes)} requests, none failed"
    )
    assert all(o.status is not None for o in outcomes), "a request got no answer within 30 s"
    for o in failed:  # what was in flight at the failover fails, clearly
        assert o.status == 503, o.body
        assert o.body["error"]["code"], o.body
    # everything sent once the new primary is known succeeds: the same worker thread and API serve it
    assert worker.thread.is_alive() and api.thread.is_alive()
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        for _ in range(8):
            r = http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert r.status_code == 200, r.text
    primary = sync_client(sentinel_group.url)
    assert primary.info("server")["tcp_port"] == sentinel_group.replica_port
