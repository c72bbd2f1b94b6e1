"""What the Batch API tests share: batch settings of a test's own, batch worker processes, input files."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from openai import OpenAI
from openai.types import Batch
from rq import Queue

from broker.connection import sync_client
from broker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def batch_settings_of(settings: Settings, files_dir: Path, **extra: Any) -> Settings:
    """A test's settings with its own files directory and rq queue, so no other test's batch worker takes its runs."""
    update = {"files_dir": files_dir, "batch_queue": f"queuechat-batch-{settings.key_prefix}", **extra}
    return settings.model_copy(update=update)


def batch_env(settings: Settings) -> dict[str, str]:
    assert settings.redis_url
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "QUEUECHAT_REDIS_URL": settings.redis_url,
        "QUEUECHAT_KEY_PREFIX": settings.key_prefix,
        "QUEUECHAT_FILES_DIR": str(settings.files_dir),
        "QUEUECHAT_BATCH_QUEUE": settings.batch_queue,
        "QUEUECHAT_BATCH_MAX_IN_FLIGHT": str(settings.batch_max_in_flight),
        "QUEUECHAT_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "QUEUECHAT_HEARTBEAT_TTL": str(settings.heartbeat_ttl),
    }


class BatchWorkers:
    """``queuechat batch-worker`` processes of one test; all are killed at the end."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str = "batch-worker") -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "queuechat", "batch-worker", "--log-level", "info"],
            env=batch_env(self.settings),
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        self.processes.append(process)
        return process

    def log_text(self, name: str = "batch-worker") -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        assert self.settings.redis_url
        Queue(self.settings.batch_queue, connection=sync_client(self.settings.redis_url)).delete(delete_jobs=True)


def chat_lines(n: int, max_tokens: int = 4, model: str = "tiny") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Say the number {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id


def wait_batch(client: OpenAI, batch_id: str, until: set[str] = TERMINAL, timeout: float = 120) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} ({batch.request_counts}) after {timeout}s")
        time.sleep(0.1)


def results(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]
