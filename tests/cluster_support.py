"""A real Redis Cluster on loopback: three primaries from Debian's ``redis-server`` (``--cluster-enabled yes``),
each on a free port in a temporary directory, joined with ``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest
import redis

from tests.conftest import free_port

PRIMARIES = 3


def cluster_binaries() -> tuple[str, str] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


needs_cluster = pytest.mark.skipif(cluster_binaries() is None, reason="Debian's redis-server/redis-cli not installed")


class LocalCluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = [free_port() for _ in range(PRIMARIES)]
        # the cluster bus would be the port + 10000 by default, which may be taken (or past 65535)
        self.bus_ports = [free_port() for _ in range(PRIMARIES)]
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> LocalCluster:
        binaries = cluster_binaries()
        assert binaries, "redis-server is not installed"
        server, cli = binaries
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            data = self.directory / f"node-{port}"
            data.mkdir(parents=True, exist_ok=True)
            log = (data / "redis.log").open("wb")
            args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf")]
            args += ["--cluster-port", str(bus_port), "--cluster-node-timeout", "2000"]
            self._processes.append(subprocess.Popen([server, *args], stdout=log, stderr=subprocess.STDOUT))
        for port in self.ports:
            _wait_ping(port)
        hosts = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *hosts, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._wait_ok()
        return self

    def _wait_ok(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(redis.Redis(port=p).cluster("info").get("cluster_state") == "ok" for p in self.ports):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError("the cluster did not reach state ok")

    def port_of_slot(self, slot: int) -> int:
        """The port of the primary that serves ``slot``."""
        for start, end, primary, *_ in redis.Redis(port=self.ports[0]).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise AssertionError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise AssertionError(f"redis-server on port {port} did not start")
