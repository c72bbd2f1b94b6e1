"""The ACL rules of broker.acl are enough to serve: a worker, the API, a batch worker and info each run as their own
Redis user."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from typer.testing import CliRunner

from broker.acl import ROLES, acl_rules
from broker.connection import sync_client
from broker.consumer import Delivery, JobConsumer
from broker.keys import CONSUMER_GROUP, Keys
from broker.monitor import Snapshot
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.settings import Settings, parse_wait_for_worker
from queuechat.cli import app
from tests.batch_support import BatchWorkers, batch_settings_of, chat_lines, results, upload, wait_batch
from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.integration.test_batches import openai_client
from tests.integration.test_info import _job

README = Path(__file__).resolve().parents[2] / "README.md"


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}:{parts.port or 6379}"))


@pytest.fixture
def role_urls(settings: Settings) -> Iterator[dict[str, str]]:
    """A Redis user per role, limited to this test's key prefix; their URLs by role. Deleted afterwards."""
    assert settings.redis_url
    admin = sync_client(settings.redis_url)
    users: dict[str, str] = {}
    for role in ROLES:
        user = f"{settings.key_prefix}-{role}"
        password = uuid.uuid4().hex
        admin.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">{password}", *acl_rules(role, settings.key_prefix)
        )
        users[role] = _with_user(settings.redis_url, user, password)
    yield users
    admin.execute_command("ACL", "DELUSER", *(f"{settings.key_prefix}-{role}" for role in ROLES))


def test_each_role_serves_with_its_own_user(
    settings: Settings,
    role_urls: dict[str, str],
    start_worker: Callable[..., RunningWorker],
    start_api: Callable[..., ApiServer],
) -> None:
    start_worker(settings_=settings.model_copy(update={"redis_url": role_urls["worker"]}))
    api = start_api(settings.model_copy(update={"redis_url": role_urls["front"]}))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    for stream, priority in ((False, 0), (True, 0), (False, 3)):  # priority 3: a stream of its own
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "stream": stream, "priority": priority}
        response = httpx.post(f"{api.base_url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
    metrics = httpx.get(f"{api.base_url}/metrics", timeout=15).text
    assert "queuechat:broker_up 1.0" in metrics
    assert 'queuechat:num_workers{model_name="tiny"} 1.0' in metrics

    def info() -> Snapshot | None:
        result = CliRunner().invoke(
            app, ["info", "--json", "-u", role_urls["monitor"], "--key-prefix", settings.key_prefix]
        )
        assert result.exit_code == 0, result.stderr
        snap = Snapshot.model_validate_json(result.stdout)
        return snap if snap.queues and snap.queues[0].completed == 3 else None

    snap = wait_for(info)
    assert [q.model for q in snap.queues] == ["tiny"] and len(snap.workers) == 1


def test_a_batch_runs_with_the_front_and_batch_users(
    settings: Settings,
    role_urls: dict[str, str],
    tmp_path: Path,
    start_worker: Callable[..., RunningWorker],
    start_api: Callable[..., ApiServer],
) -> None:
    """The Batch API's routes run as the front user (upload, create, cancel a batch no batch worker took yet) and
    ``queuechat batch-worker`` as the batch user, and none of their commands is refused along the way."""
    assert settings.redis_url
    admin = sync_client(settings.redis_url)
    batches = batch_settings_of(settings, tmp_path / "files")
    start_worker(settings_=settings.model_copy(update={"redis_url": role_urls["worker"]}))
    api = start_api(batches.model_copy(update={"redis_url": role_urls["front"]}))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    client = openai_client(api)
    file_id = upload(client, chat_lines(3))
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    early = client.batches.create(**create)
    assert client.batches.cancel(early.id).status == "cancelled"  # its rq job taken off the queue by the front user
    workers = BatchWorkers(batches.model_copy(update={"redis_url": role_urls["batch"]}), tmp_path)
    try:
        workers.start()
        batch = wait_batch(client, client.batches.create(**create).id)
        assert batch.status == "completed", workers.log_text()
        answered = sorted(r["custom_id"] for r in results(client, batch.output_file_id))
        assert answered == [f"request-{i}" for i in range(3)]
        wait_for(lambda: "Job OK" in workers.log_text())  # rq has recorded the run's end
    finally:
        workers.settings = batches  # the test's own user deletes the queue
        workers.stop()
    refused = {
        (entry["username"], entry["object"])
        for entry in admin.acl_log()
        if str(entry["username"]).startswith(f"{settings.key_prefix}-")
    }
    assert {object_ for _, object_ in refused} <= {"client|setinfo"}, refused  # (redis-py carries on without it)
    batch_user = redis.Redis.from_url(role_urls["batch"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        batch_user.hincrby(Keys(settings.key_prefix).stats("tiny"), "completed", 1)  # counting is the workers' job
    with pytest.raises(redis.exceptions.NoPermissionError):
        batch_user.flushall()


def test_the_front_user_declares_a_model_scaled_from_zero(
    settings: Settings, role_urls: dict[str, str], start_api: Callable[..., ApiServer]
) -> None:
    """The API creates the stream and group of a model QUEUECHAT_WAIT_FOR_WORKER declares, so that an autoscaler
    finds the group's lag before any worker ran: its user may."""
    front = settings.model_copy(
        update={"redis_url": role_urls["front"], "wait_for_worker": parse_wait_for_worker("later=30")}
    )
    start_api(front)
    assert settings.redis_url
    groups = sync_client(settings.redis_url).xinfo_groups(Keys(settings.key_prefix).jobs("later"))
    assert [g["name"] for g in groups] == [CONSUMER_GROUP.encode()]


def test_worker_user_takes_jobs_over_and_dead_letters(settings: Settings, role_urls: dict[str, str]) -> None:
    """The recovery path runs as the worker user too: reclaiming a dead worker's job, then dead-lettering it."""
    keys = Keys(settings.key_prefix)
    client = sync_client(role_urls["worker"])

    def consumer(name: str) -> JobConsumer:
        made = JobConsumer(client, keys, ["m"], name, max_deliveries=2, claim_min_idle=0.05)
        made.ensure_groups()
        WorkerRegistration(client, keys, WorkerCard(id=name, models=["m"]), ttl=60).heartbeat(WorkerStatus())
        return made

    first = consumer("w1")
    client.xadd(keys.jobs("m"), {"job": _job("m")})
    assert len(first.read(1, None)) == 1
    client.delete(keys.heartbeat("w1"))  # w1 died
    time.sleep(0.1)  # past claim_min_idle
    second = consumer("w2")
    assert [d.job.attempt for d in second.reclaim(10).deliveries if isinstance(d, Delivery)] == [2]
    client.delete(keys.heartbeat("w2"))  # and so did w2
    time.sleep(0.1)
    outcome = consumer("w3").reclaim(10)
    assert outcome.deliveries == [] and len(outcome.dead_lettered) == 1
    assert client.xlen(keys.dead("m")) == 1


def test_monitor_user_cannot_write_and_nobody_reaches_other_prefixes(
    settings: Settings, role_urls: dict[str, str]
) -> None:
    keys = Keys(settings.key_prefix)
    monitor = redis.Redis.from_url(role_urls["monitor"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        monitor.xadd(keys.jobs("tiny"), {"job": "{}"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        monitor.flushall()
    front = redis.Redis.from_url(role_urls["front"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        front.hincrby(keys.stats("tiny"), "completed", 1)  # counting is the workers' job
    for url in role_urls.values():
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(url).get("another-deployment:worker:x")


def test_readme_gives_the_rules() -> None:
    text = README.read_text()
    for role in ROLES:
        assert " ".join(acl_rules(role, "qc")) in text, role
