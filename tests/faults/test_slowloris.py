"""Slow clients (slowloris): sockets that open a request head and never finish it are closed after the header
timeout; beyond the connection limit a request is a clean 503; normal requests are served; the log stays quiet."""

from __future__ import annotations

import http.client
import select
import socket
import time

import httpx

from tests.conftest import free_port, wait_for
from tests.faults.conftest import Cluster

SLOW_SOCKETS = 40
LIMIT = 20
HEADER_TIMEOUT = 2
HTTPX_KEEPALIVE_EXPIRY = 5.0  # httpx.Limits' default keepalive_expiry


def test_slow_clients_are_cut_and_normal_requests_served(cluster: Cluster) -> None:
    cluster.start_worker("worker")
    cluster.wait_workers(1)
    port = free_port()
    cluster._spawn(
        "api",
        [
            "-m", "queuechat", "api", "--port", str(port), "--log-level", "info",
            "--limit-concurrency", str(LIMIT), "--header-timeout", str(HEADER_TIMEOUT),
        ],
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base_url}/health", timeout=1).status_code == 200, timeout=60)

    slow = []
    for _ in range(SLOW_SOCKETS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the end of the head
        slow.append(sock)
    try:
        # meanwhile, a normal request is answered, or refused cleanly while the slow ones fill the limit
        during = httpx.get(f"{base_url}/v1/models", timeout=10)
        assert during.status_code in (200, 503)
        # every slow socket is closed by the server (trickling a byte each half second does not keep it open)
        open_ = set(slow)
        deadline = time.monotonic() + 30
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_), [], [], 0.5)
            for sock in readable:
                try:
                    if sock.recv(4096) == b"":
                        open_.discard(sock)
                except OSError:
                    open_.discard(sock)
            for sock in list(open_):
                try:
                    sock.send(b"x")
                except OSError:
                    open_.discard(sock)
        assert not open_, f"{len(open_)} of {SLOW_SOCKETS} slow sockets still open"
        after = [httpx.get(f"{base_url}/v1/models", timeout=10) for _ in range(2)]
        assert [r.status_code for r in after] == [200, 200]
        assert after[0].json()["data"]
    finally:
        for sock in slow:
            sock.close()
    log = cluster.log_text("api")
    assert "Traceback" not in log
    assert len(log.splitlines()) < 100


def test_an_idle_keep_alive_connection_outlives_the_clients_pools(cluster: Cluster) -> None:
    """A connection idle between two requests is the client's to close: httpx (so the openai and anthropic clients)
    reuses one for 5 s, so a server that closed it sooner (the header timer re-armed at the end of a response, or
    uvicorn's 5 s keep-alive) raced those clients' next requests into connection errors."""
    port = free_port()
    cluster._spawn(
        "api", ["-m", "queuechat", "api", "--port", str(port), "--header-timeout", str(HEADER_TIMEOUT)]
    )  # fmt: skip
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200, timeout=60)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        time.sleep(HTTPX_KEEPALIVE_EXPIRY + 1)  # idle past both the header timeout and httpx's pool expiry
        conn.request("GET", "/health")
        again = conn.getresponse()
        again.read()
        assert (first.status, again.status) == (200, 200)
        assert conn.sock is sock, "the second request needed a new connection"
        # the next head still owes the header timeout from its first byte: a trickled one is cut
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.settimeout(HEADER_TIMEOUT * 5)
        assert sock.recv(4096) == b""
    finally:
        conn.close()
