"""A real Sentinel-managed group on loopback: one primary, one replica and three sentinels, from Debian's
``redis-server`` (run as a sentinel with ``--sentinel``), each on a free port, in a temporary directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import cast

import redis

from tests.conftest import free_port

SERVICE = "queuechat"
# Fast failover for tests: a primary silent for 1 s is down; two of the three sentinels must agree.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class SentinelGroup:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _start(self, port: int, args: list[str], name: str) -> None:
        binary = redis_server_binary()
        assert binary, "redis-server is not installed"
        log = (self.directory / f"{name}.log").open("wb")
        self._processes[port] = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT)

    def _server_args(self, port: int) -> list[str]:
        data = self.directory / f"data-{port}"
        data.mkdir(parents=True, exist_ok=True)
        return ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"]

    def start(self) -> SentinelGroup:
        self._start(self.primary_port, self._server_args(self.primary_port), "primary")
        self._wait_ping(self.primary_port)
        replica_args = [*self._server_args(self.replica_port), "--replicaof", "127.0.0.1", str(self.primary_port)]
        self._start(self.replica_port, replica_args, "replica")
        self._wait_ping(self.replica_port)
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"  # a sentinel rewrites its config: one file each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._start(port, [str(conf), "--sentinel"], f"sentinel-{port}")
        for port in self.sentinel_ports:
            self._wait_ping(port)
        self.wait_replicated()
        return self

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until the replica is in sync and every sentinel knows the primary (and its replica)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = redis.Redis(port=self.replica_port).info("replication")
                known = all(
                    int(redis.Redis(port=p).sentinel_master(SERVICE).get("num-slaves", 0)) >= 1
                    for p in self.sentinel_ports
                )
                if info.get("master_link_status") == "up" and known:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError("the Sentinel group did not come up")

    def current_primary_port(self) -> int:
        address = redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)
        _host, port = cast(tuple[str, int], address)
        return int(port)

    def kill(self, port: int) -> None:
        process = self._processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    @staticmethod
    def _wait_ping(port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server on port {port} did not start")

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
