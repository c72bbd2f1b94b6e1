"""The fault suite's cluster: real worker and API processes (``python -m workers``, ``python -m api``) on a real
Redis, so a fault is a real signal to a real process. Each test gets its own key prefix and short heartbeats
(0.5 s interval, 2 s TTL), so a killed worker is noticed in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.registry import live_workers
from tests.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
VLLM_WORKER_FLAGS = ["--enforce-eager", "--max-model-len", "2048", "--kv-cache-gib", "0.5"]


class Cluster:
    """Processes of one test; everything it starts is killed at the end, whatever happened."""

    def __init__(
        self,
        redis_url: str,
        model_dir: Path,
        logs: Path,
        model: str = "tiny",
        engine: str = "transformers",
        **settings: float,
    ) -> None:
        self.redis_url = redis_url
        self.engine = engine
        self.model_dir = model_dir
        self.model = model
        self.logs = logs
        self.prefix = f"qcfault-{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.prefix)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),  # the checkout under test, also when it is not installed
            "OMP_NUM_THREADS": "1",
            "QUEUECHAT_REDIS_URL": redis_url,
            "QUEUECHAT_KEY_PREFIX": self.prefix,
            "QUEUECHAT_HEARTBEAT_INTERVAL": "0.5",
            "QUEUECHAT_HEARTBEAT_TTL": "2",
            "QUEUECHAT_CLAIM_MIN_IDLE": "0.5",
            **{f"QUEUECHAT_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        env = {**self.env, **(env or {})}
        process = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def start_worker(
        self,
        name: str,
        slots: int = 16,
        extra: list[str] | None = None,
        module: str = "workers",
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker process; ``module`` "tests.faults.hooked_worker" gives it the fault hooks ``env`` sets."""
        return self._spawn(
            name,
            [
                "-m", module,
                "--model-path", str(self.model_dir),
                "--model-names", self.model,
                "--device", "cpu",
                "--num-threads", "1",
                "--limit-worker-concurrency", str(slots),
                "--num-blocks", "512",
                "--page-size", "32",
                "--log-level", "info",
                "--engine", self.engine,
                # vLLM: no compilation warm-up (on two cores it takes longer than the test), and a context its small
                # KV cache holds (vLLM refuses to start when the model's whole context does not fit)
                *(VLLM_WORKER_FLAGS if self.engine == "vllm" else []),
                *(extra or []),
            ],
            env,
        )  # fmt: skip

    def start_batch_worker(self, name: str) -> subprocess.Popen[bytes]:
        """``queuechat batch-worker`` (rq), with the cluster's prefix; set its files dir and queue in ``env``."""
        return self._spawn(name, ["-m", "queuechat", "batch-worker", "--log-level", "info"])

    def start_api(self) -> str:
        port = free_port()
        self._spawn("api", ["-m", "api", "--port", str(port), "--log-level", "warning"])
        base_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base_url}/health", timeout=1).status_code == 200, timeout=60)
        return base_url

    def live(self) -> list[str]:
        return [w.card.id for w in live_workers(sync_client(self.redis_url), self.keys)]

    def wait_workers(self, count: int, timeout: float = 90) -> list[str]:
        if self.engine == "vllm":
            timeout = max(timeout, 300)  # importing vLLM and building its engine takes a minute or more per worker
        return wait_for(lambda: len(self.live()) == count and self.live(), timeout=timeout)

    def worker_process(self, worker_id: str) -> subprocess.Popen[bytes]:
        """The process behind a registry id (ids are host-pid-random)."""
        pid = int(worker_id.rsplit("-", 2)[1])
        return next(p for p in self.processes if p.pid == pid)

    def running(self, process: subprocess.Popen[bytes]) -> int:
        """Jobs a worker process runs now, as its last heartbeat says."""
        workers = live_workers(sync_client(self.redis_url), self.keys)
        return sum(w.status.running for w in workers if w.card.pid == process.pid)

    def stats(self) -> dict[str, int]:
        raw = sync_client(self.redis_url).hgetall(self.keys.stats(self.model))
        return {k.decode(): int(v) for k, v in raw.items()}

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=10)
        client = sync_client(self.redis_url)
        keys = [*client.scan_iter(match=f"{self.prefix}:*"), *client.scan_iter(match=f"{{{self.prefix}}}:*")]
        if keys:
            pipe = client.pipeline(transaction=False)  # one DEL each: on a Redis Cluster they are on several slots
            for key in keys:
                pipe.delete(key)
            pipe.execute()


@pytest.fixture
def cluster(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path, engine_kind: str, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """A cluster of the tiny model: fast, for faults whose outcome does not depend on the model's speed. On the
    vLLM engine, the tiny model in the shape vLLM's CPU kernels take."""
    model_dir = request.getfixturevalue("vllm_model_dir") if engine_kind == "vllm" else tiny_model_dir
    running = Cluster(redis_url, model_dir, tmp_path, engine=engine_kind)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def smollm2_cluster(redis_url: str, tmp_path: Path, engine_kind: str) -> Iterator[Cluster]:
    """A cluster of SmolLM2, for faults measured in tokens: the tiny model's steps (a few ms) are too short to say
    anything about a real model's."""
    from workers.default_model import DEFAULT_MODEL_NAME, default_model_dir

    running = Cluster(redis_url, default_model_dir(), tmp_path, model=DEFAULT_MODEL_NAME, engine=engine_kind)
    try:
        yield running
    finally:
        running.stop()


def until(predicate: object, timeout: float) -> None:
    """Poll without raising: for phases of a test that wait on a state they then check themselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():  # type: ignore[operator]
        time.sleep(0.05)
