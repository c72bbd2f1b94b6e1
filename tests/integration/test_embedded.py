"""The embedded Valkey: starts on a free port, stops with its owner, even when the owner is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from broker.embedded import EmbeddedValkey
from tests.conftest import wait_for


def test_starts_and_stops() -> None:
    with EmbeddedValkey() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        pid = server.pid
    assert pid is not None
    wait_for(lambda: not _alive(pid), timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purpose
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_server_dies_with_a_killed_parent() -> None:
    code = (
        "from broker.embedded import EmbeddedValkey; import time\n"
        "s = EmbeddedValkey(); s.start(); print(s.pid, s.port, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid_text, port_text = parent.stdout.readline().split()
    server_pid, port = int(pid_text), int(port_text)
    assert redis.Redis(port=port).ping()
    parent.send_signal(signal.SIGKILL)
    parent.wait(5)
    wait_for(lambda: not _alive(server_pid), timeout=5)
    time.sleep(0.1)
    try:
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()
        raise AssertionError("the embedded server outlived its parent")
    except redis.ConnectionError:
        pass


def test_the_suites_redis_is_a_server_of_its_own(redis_url: str) -> None:
    """Unless QUEUECHAT_TEST_REDIS_URL names one, the suite's Redis is a server this test process started, never
    whatever answers on 127.0.0.1:6379: one shared with other work timed tests out under its load."""
    if os.environ.get("QUEUECHAT_TEST_REDIS_URL"):
        pytest.skip("QUEUECHAT_TEST_REDIS_URL names the Redis to test against")
    server_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    with open(f"/proc/{server_pid}/stat") as f:
        parent_pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the field after the state
    assert parent_pid == os.getpid()
