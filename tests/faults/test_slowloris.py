"""Slow clients (slowloris): sockets that open a request head and never finish it are closed after the header
timeout; beyond the connection limit a request is a clean 503; normal requests are served; the log stays quiet."""

from __future__ import annotations

import http.client
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for
from tests.faults.conftest import REPO, Cluster

SLOW_SOCKETS = 40
LIMIT = 20
HEADER_TIMEOUT = 2
HTTPX_KEEPALIVE_EXPIRY = 5.0  # httpx.Limits' default keepalive_expiry
CAPPED = 8  # the connection limit of the cap test: held by that many slow sockets
LOW_SOFT_FILES = 256  # the soft open-file limit the cap test's API starts with (the hard one stays)


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


def _open_files_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) open-file limits of a process, as the kernel holds them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


def test_beyond_the_connection_limit_a_request_is_a_clean_503_and_the_file_limit_is_raised(cluster: Cluster) -> None:
    """The connection cap on its own (a header timeout long enough that it closes nothing here): with the limit's
    worth of slow sockets open, a normal request is refused at once with a 503, and served again once they close.
    The API started under a low soft open-file limit raises it to the hard one, so the cap, not the descriptors,
    is what runs out first (1,100 slow sockets under a soft limit of 1,024 left no request served)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > LOW_SOFT_FILES, "the hard open-file limit is too low to test"
    port = free_port()
    log = (cluster.logs / "api.log").open("ab")
    api = subprocess.Popen(
        [
            sys.executable, "-m", "queuechat", "api", "--port", str(port), "--log-level", "info",
            "--limit-concurrency", str(CAPPED), "--header-timeout", "600",
        ],
        env=cluster.env, cwd=REPO, stdout=log, stderr=log,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT_FILES, hard)),
    )  # fmt: skip
    cluster.processes.append(api)
    base_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base_url}/health", timeout=1).status_code == 200, timeout=60)
    soft_now, hard_now = _open_files_limits(api.pid)
    assert soft_now == hard_now, f"the API kept a soft open-file limit of {soft_now} (hard {hard_now})"
    assert httpx.get(f"{base_url}/v1/models", timeout=10).status_code == 200  # so a 503 below is the cap's

    slow = []
    try:
        for _ in range(CAPPED):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the end of the head
            slow.append(sock)
        # the server counts a connection once its loop has accepted it: until all are counted, one may get through
        wait_for(lambda: httpx.get(f"{base_url}/v1/models", timeout=10).status_code == 503, timeout=30)
    finally:
        for sock in slow:
            sock.close()
    # once the slow ones are gone, requests are served again
    wait_for(lambda: httpx.get(f"{base_url}/v1/models", timeout=10).status_code == 200, timeout=30)
    assert httpx.get(f"{base_url}/v1/models", timeout=10).json()["object"] == "list"
    assert "Traceback" not in cluster.log_text("api")
