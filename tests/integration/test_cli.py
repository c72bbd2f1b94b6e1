"""The CLI as a user meets it, as real processes: --version, info's --redis-url, a wrong --model-path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def queuechat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "queuechat", *args],
        env={**base, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version() -> None:
    run = queuechat("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("queuechat ")
    assert len(run.stdout.split()) == 2


@pytest.mark.parametrize("flag", ["--redis-url", "-u", "--url"])
def test_info_takes_redis_url_like_every_other_command(settings: Settings, flag: str) -> None:
    assert settings.redis_url
    card = WorkerCard(id="w-cli", models=["cli-model"], slots=2)
    WorkerRegistration(sync_client(settings.redis_url), Keys(settings.key_prefix), card, ttl=60).heartbeat(
        WorkerStatus()
    )
    run = queuechat("info", flag, settings.redis_url, "--key-prefix", settings.key_prefix, "--json")
    assert run.returncode == 0, run.stderr
    assert [w["id"] for w in json.loads(run.stdout)["workers"]] == ["w-cli"]


@pytest.mark.parametrize("model_path", ["/nonexistent/model-dir", "HuggingFaceTB/SmolLM2-135M-Instruct", "EMPTY"])
def test_a_wrong_model_path_is_one_clear_line(settings: Settings, tmp_path: Path, model_path: str) -> None:
    """A typo, a hub id (offline: not downloaded here) or a directory without a model: one line, exit non-zero."""
    assert settings.redis_url
    if model_path == "EMPTY":
        model_path = str(tmp_path)
    run = queuechat("worker", "--redis-url", settings.redis_url, "--device", "cpu", "--model-path", model_path)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    lines = [line for line in run.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("queuechat worker: ") and model_path in lines[0]


def _registered(settings: Settings, timeout: float = 90) -> list[WorkerCard]:
    import time

    from broker.registry import live_workers

    assert settings.redis_url
    client = sync_client(settings.redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = live_workers(client, Keys(settings.key_prefix))
        if live:
            return [w.card for w in live]
        time.sleep(0.2)
    raise AssertionError("no worker registered")


def test_a_worker_is_configured_by_environment_alone_and_a_flag_wins(settings: Settings, tiny_model_dir: Path) -> None:
    """What a compose file or a Kubernetes manifest does: every flag as QUEUECHAT_<FLAG>."""
    assert settings.redis_url
    env = {
        "QUEUECHAT_REDIS_URL": settings.redis_url,
        "QUEUECHAT_KEY_PREFIX": settings.key_prefix,
        "QUEUECHAT_MODEL_PATH": str(tiny_model_dir),
        "QUEUECHAT_MODEL_NAMES": "from-env, also-env",
        "QUEUECHAT_DEVICE": "cpu",
        "QUEUECHAT_NUM_THREADS": "1",
        "QUEUECHAT_LIMIT_WORKER_CONCURRENCY": "3",
        "QUEUECHAT_NUM_BLOCKS": "16",
        "QUEUECHAT_PAGE_SIZE": "16",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECHAT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "queuechat", "worker", "--limit-worker-concurrency", "5"],
        env={**base, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        (card,) = _registered(settings)
        assert card.models == ["from-env", "also-env"]
        assert card.slots == 5  # the flag, over QUEUECHAT_LIMIT_WORKER_CONCURRENCY=3
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_worker_variable_that_cannot_be_read_is_named(settings: Settings) -> None:
    assert settings.redis_url
    run = queuechat(
        "worker", env={"QUEUECHAT_REDIS_URL": settings.redis_url, "QUEUECHAT_LIMIT_WORKER_CONCURRENCY": "many"}
    )
    assert run.returncode == 2
    assert "QUEUECHAT_LIMIT_WORKER_CONCURRENCY" in run.stderr and "Traceback" not in run.stderr
