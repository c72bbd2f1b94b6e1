"""``queuechat info`` against a real Redis: the counts it shows are the ones in the streams, hashes and heartbeats."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from broker.connection import async_client, sync_client
from broker.consumer import JobConsumer
from broker.decode import waiting_of
from broker.keys import Keys
from broker.monitor import Snapshot, snapshot
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Job, JobKind
from broker.settings import Settings
from broker.tenants import TenantKeys, TenantLimits, TenantStore, current_tenant
from queuechat.cli import app
from tests.conftest import Stack, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


def _job(model: str) -> str:
    return Job(kind=JobKind.COMPLETION, model=model, prompt="hi", deadline=time.time() + 600).model_dump_json()


@pytest.fixture
def scene(settings: Settings) -> Settings:
    """Model ``alpha``: 5 jobs queued an hour ago, 2 of them taken by a busy worker; counters and 2 dead letters.
    Model ``beta``: an empty stream nobody serves. Plus the card of a worker whose heartbeat expired."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    consumer = JobConsumer(client, keys, ["alpha"], "w-busy")
    consumer.ensure_groups()
    JobConsumer(client, keys, ["beta"], "nobody").ensure_groups()
    seconds, _ = client.time()
    hour_ago = (seconds * 1000) - HOUR_MS
    for i in range(5):
        client.xadd(keys.jobs("alpha"), {"job": _job("alpha")}, id=f"{hour_ago + i}-0")
    assert len(consumer.read(count=2, block_ms=None)) == 2
    client.hset(keys.stats("alpha"), mapping={"completed": 7, "failed": 1, "expired": 2, "output_tokens": 70})
    for _ in range(2):
        client.xadd(keys.dead("alpha"), {"job": _job("alpha")})
    card = WorkerCard(id="w-busy", models=["alpha"], host="gpu-1", pid=4242, device="cuda:0", slots=8)
    status = WorkerStatus(state="busy", running=2, free_slots=6, tokens_per_s=12.5, completed=7, failed=1)
    WorkerRegistration(client, keys, card, ttl=60).heartbeat(status)
    client.hset(keys.workers, "w-gone", WorkerCard(id="w-gone", models=["alpha"]).model_dump_json())
    return settings


def _info(settings: Settings, *args: str) -> tuple[int, str, str]:
    assert settings.redis_url
    result = CliRunner().invoke(app, ["info", "-u", settings.redis_url, "--key-prefix", settings.key_prefix, *args])
    return result.exit_code, result.stdout, result.stderr


def test_snapshot_counts_what_is_in_redis(scene: Settings) -> None:
    assert scene.redis_url
    client = sync_client(scene.redis_url)
    keys = Keys(scene.key_prefix)
    snap = snapshot(client, keys)
    alpha, beta = snap.queues
    assert (alpha.model, beta.model) == ("alpha", "beta")
    assert (alpha.waiting, alpha.running) == (3, 2)
    assert (alpha.completed, alpha.failed, alpha.expired, alpha.cancelled, alpha.dead) == (7, 1, 2, 0, 2)
    assert alpha.output_tokens == 70
    assert alpha.workers == 1 and alpha.slots == 8 and alpha.tokens_per_s == 12.5
    # the oldest waiting job is the third one queued, an hour ago by Redis' clock
    assert alpha.oldest_waiting_s is not None and 3590 < alpha.oldest_waiting_s < 3700
    assert (beta.waiting, beta.running, beta.workers, beta.oldest_waiting_s) == (0, 0, 0, None)
    assert snap.waiting == 3
    [worker] = snap.workers
    assert (worker.id, worker.host, worker.pid, worker.state, worker.running, worker.slots) == (
        "w-busy", "gpu-1", 4242, "busy", 2, 8,
    )  # fmt: skip
    assert (worker.completed, worker.failed, worker.device) == (7, 1, "cuda:0")
    # reading is read-only: the expired card is left for the workers to prune
    assert client.hexists(keys.workers, "w-gone")


def test_waiting_without_lag_falls_back_to_length_minus_pending(scene: Settings) -> None:
    assert scene.redis_url
    client = sync_client(scene.redis_url)
    keys = Keys(scene.key_prefix)
    waiting_ids = [e[0] for e in client.xrange(keys.jobs("alpha"))][2:]
    client.xdel(keys.jobs("alpha"), waiting_ids[0])  # a deletion past the group's position makes the lag unknown
    assert snapshot(client, keys, ["alpha"]).queues[0].waiting == 2
    assert waiting_of({"lag": None, "pending": 2}, 4) == 2
    assert waiting_of({"lag": 5, "pending": 2}, 4) == 5


def test_model_arguments_filter_queues_and_workers(scene: Settings) -> None:
    code, out, _ = _info(scene, "beta", "--json")
    assert code == 0
    snap = Snapshot.model_validate_json(out)
    assert [q.model for q in snap.queues] == ["beta"] and snap.workers == []
    code, out, _ = _info(scene, "alpha", "nosuch", "--json")
    snap = Snapshot.model_validate_json(out)
    assert [(q.model, q.waiting) for q in snap.queues] == [("alpha", 3), ("nosuch", 0)]
    assert [w.id for w in snap.workers] == ["w-busy"]


def test_raw_lines_for_scripts(scene: Settings) -> None:
    code, out, _ = _info(scene, "--raw")
    assert code == 0
    lines = out.splitlines()
    alpha = next(line for line in lines if line.startswith("queue alpha "))
    fields = dict(item.split("=", 1) for item in alpha.split()[2:])
    assert fields["waiting"] == "3" and fields["running"] == "2" and fields["dead"] == "2"
    assert fields["completed"] == "7" and fields["failed"] == "1" and fields["workers"] == "1"
    worker = next(line for line in lines if line.startswith("worker w-busy "))
    assert "state=busy" in worker and "running=2" in worker and "slots=8" in worker and "device=cuda:0" in worker
    assert "2 models, 3 jobs waiting" in lines
    assert lines[-1].startswith("Updated: ")
    assert "█" not in out and "\x1b[" not in out


def test_only_and_by_model_flags(scene: Settings) -> None:
    _, queues_only, _ = _info(scene, "-r", "-Q")
    assert "queue alpha" in queues_only and "worker " not in queues_only
    _, workers_only, _ = _info(scene, "-r", "-W")
    assert "worker w-busy" in workers_only and "queue " not in workers_only
    _, grouped, _ = _info(scene, "-r", "-R")
    assert "model alpha workers=w-busy" in grouped.splitlines()
    assert "model beta workers=" in grouped.splitlines()


def test_rich_layout_shows_bars_states_and_summary(scene: Settings) -> None:
    code, out, _ = _info(scene)
    assert code == 0
    assert "alpha" in out and "█" in out
    assert "2 models, 3 jobs waiting" in out
    assert "busy" in out and "gpu-1/4242" in out and "2/8" in out
    assert "Updated: " in out


def test_unreachable_redis_is_one_line_and_exit_1() -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(app, ["info", "-u", url])
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "cannot reach Redis" in line and "secret" not in line and "127.0.0.1" in line


def test_a_url_without_a_scheme_is_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(app, ["info", "-u", "localhost:6379"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "invalid Redis URL" in line


def test_url_from_the_environment(scene: Settings) -> None:
    assert scene.redis_url
    result = CliRunner().invoke(
        app,
        ["info", "--json"],
        env={"QUEUECHAT_REDIS_URL": scene.redis_url, "QUEUECHAT_KEY_PREFIX": scene.key_prefix},
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["waiting"] == 3


def test_interval_redraws_until_ctrl_c_then_exits_0(scene: Settings) -> None:
    assert scene.redis_url
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    args = ["-m", "queuechat", "info", "-u", scene.redis_url, "--key-prefix", scene.key_prefix, "-r", "-i", "0.2"]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        updates = 0
        deadline = time.monotonic() + 30
        while updates < 2 and time.monotonic() < deadline:
            if proc.stdout.readline().startswith("Updated: "):
                updates += 1
        assert updates == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_interval_on_a_terminal_redraws_in_place_until_ctrl_c(scene: Settings) -> None:
    """On a terminal the view is redrawn in place (rich Live) rather than printed again and again."""
    assert scene.redis_url
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "LINES": "40", "TERM": "xterm"}
    args = ["-m", "queuechat", "info", "-u", scene.redis_url, "--key-prefix", scene.key_prefix, "-i", "0.2"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, *args], stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(b"Updated: ") < 3 and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 65536)
        assert seen.count(b"Updated: ") >= 3
        assert b"2 models, 3 jobs waiting" in seen and b"\x1b[" in seen  # colours and cursor moves
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)


def test_info_follows_real_traffic(stack: Stack, settings: Settings) -> None:
    for _ in range(2):
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
        assert httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60).status_code == 200
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)

    def settled() -> Snapshot | None:
        snap = snapshot(client, keys)
        return snap if snap.workers and snap.workers[0].completed == 2 else None

    snap = wait_for(settled)
    [tiny] = snap.queues
    assert (tiny.model, tiny.completed, tiny.output_tokens, tiny.waiting, tiny.running) == ("tiny", 2, 8, 0, 0)
    [worker] = snap.workers
    assert worker.id == stack.worker.id and worker.state == "idle" and worker.models == ["tiny"]
    assert worker.pid == os.getpid() and worker.device == "cpu"


async def test_keys_usage_and_waiting_jobs_by_key(scene: Settings) -> None:
    """Each API key's usage and its jobs waiting (in its own streams: fair queuing), the requests without a key
    among them; the model's counts cover every key's streams."""
    assert scene.redis_url
    client = sync_client(scene.redis_url)
    keys = Keys(scene.key_prefix)
    store = TenantStore(client, keys)
    store.add("team-a", TenantLimits(weight=2))
    client.hincrby(TenantKeys(keys, "team-a").usage, "requests", 4)
    producer = Producer(async_client(scene.redis_url), scene)
    token = current_tenant.set(store.get("team-a"))
    try:
        for priority in (0, 0, 5):
            await producer.submit(Job(kind=JobKind.COMPLETION, model="alpha", prompt="x", deadline=time.time() + 60,
                                      priority=priority))  # fmt: skip
    finally:
        current_tenant.reset(token)
        await producer.close()
    snap = snapshot(client, keys, with_keys=True)
    alpha = snap.queues[0]
    assert (alpha.waiting, alpha.running) == (6, 2) and alpha.waiting_by_key == {"": 3, "team-a": 3}
    assert alpha.oldest_waiting_s is not None and alpha.oldest_waiting_s > 3590  # still the hour-old job
    [key] = snap.keys
    assert (key.name, key.requests, key.waiting) == ("team-a", 4, 3)
    code, out, _ = _info(scene, "--raw")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("key team-a "))
    assert "requests=4" in line and "waiting=3" in line and "waiting_by_model=alpha:3" in line
    code, out, _ = _info(scene)
    assert code == 0 and "team-a" in out and "(no key)" in out
