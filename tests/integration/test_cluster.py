"""Redis Cluster: every Lua script touches one slot, and queuechat (API, worker, info) serves on a real cluster of
three primaries (Debian's redis-server with ``--cluster-enabled yes``, on loopback)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from redis.crc import key_slot
from typer.testing import CliRunner

from broker.connection import BadRedisUrl, is_cluster, parse_cluster_url, sync_client
from broker.keys import Keys, model_slot
from broker.monitor import snapshot
from broker.schemas import Job, JobKind
from broker.settings import Settings
from broker.tenants import TenantKeys
from queuechat.cli import app
from tests.cluster_support import LocalCluster, cluster_binaries, needs_cluster
from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.faults.conftest import Cluster as Processes
from tests.faults.load import Load
from tests.openai_error import openai_error
from tests.sse import parse_sse

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
# names a deployment may well give its models, the odd ones included
MODELS = ["tiny", "meta-llama/Llama-3.1-8B-Instruct", "a}b", "x{y", "qwen:7b"]


def _one_slot(keys: list[str]) -> bool:
    return len({key_slot(k.encode()) for k in keys}) == 1


@pytest.mark.parametrize("model", MODELS)
def test_every_script_touches_one_slot(model: str) -> None:
    """The KEYS of each Lua script, as the code builds them, hash to one slot (a cluster refuses a script whose
    keys cross slots with CROSSSLOT)."""
    keys = Keys("qc")
    job = Job(kind=JobKind.CHAT, model=model, deadline=0)
    fair = [keys.jobs(model), keys.fair_streams(model), keys.fair_state(model)]
    tenant_stream = keys.fair_jobs(model, "team-a", 3)
    # fairness.ADMIT_SCRIPT: the stream the job goes to (a key's own, the model's, the batch stream), the model's
    # stream, its registry of keys' streams and round-robin state, the job's log
    for stream in (tenant_stream, keys.jobs(model), keys.batch_jobs(model)):
        assert _one_slot([stream, *fair, keys.log(job.id)])
    # FAIR_READ_SCRIPT: the keys above, the batch stream, and the keys' streams it finds in the registry
    assert _one_slot([*fair, keys.batch_jobs(model), tenant_stream])
    assert _one_slot([keys.jobs(model), keys.log(job.id), keys.events(job.id)])  # FENCED_PUBLISH_SCRIPT
    # what a worker step writes of one job (and its model's counters) is one slot: one shard of the pipeline
    assert _one_slot([keys.jobs(model), keys.cancel(job.id), keys.deaths(job.id), keys.stats(model), keys.dead(model)])
    assert key_slot(keys.jobs(model).encode()) == model_slot(model)
    batch = f"batch_{uuid.uuid4().hex}"
    # MARK_DONE_SCRIPT, and the MULTIs that add a batch or a file with its index entry
    assert _one_slot([keys.batch_done(batch), keys.batch(batch), keys.batch_lease(batch), keys.batches])
    assert _one_slot([keys.file(f"file-{uuid.uuid4().hex}"), keys.files])
    tenant = TenantKeys(keys, model)
    assert _one_slot([tenant.requests, tenant.tokens, tenant.running, tenant.usage])  # the tenant limit scripts
    worker = "w-1"
    assert _one_slot([keys.workers, keys.heartbeat(worker), keys.left(worker)])  # the registry's MGET


def test_a_job_id_finds_its_keys_alone() -> None:
    """A client resuming a stream knows only its id: the id leads to the job's log on its model's slot."""
    keys = Keys("qc")
    for model in MODELS:
        job_id = Job(kind=JobKind.CHAT, model=model, deadline=0).id
        completion_id = "chatcmpl-" + job_id.removeprefix("job-")  # what the client holds
        assert key_slot(keys.log("job-" + completion_id.removeprefix("chatcmpl-")).encode()) == model_slot(model)
        assert keys.job_of_events(keys.events(job_id)) == job_id
        assert keys.model_of_jobs(keys.jobs(model)) == model


def test_cluster_urls_are_parsed() -> None:
    target = parse_cluster_url("rediss+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002?ssl_ca_certs=/ca.pem")
    assert target.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (target.username, target.password, target.ssl) == ("u", "p@ss", True)
    assert target.node_kwargs()["ssl_ca_certs"] == "/ca.pem"
    for bad in ("redis+cluster://", "redis+cluster://h:1/3", "redis+cluster://h:port"):
        with pytest.raises(BadRedisUrl):
            parse_cluster_url(bad)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if cluster_binaries() is None:
        pytest.skip("Debian's redis-server is not installed")
    with LocalCluster(Path(tmp_path_factory.mktemp("cluster"))) as running:
        yield running


@pytest.fixture
def cluster_settings(cluster: LocalCluster, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=cluster.url,
        key_prefix=f"qct-{uuid.uuid4().hex[:8]}",
        heartbeat_interval=0.5,
        heartbeat_ttl=2.0,
        files_dir=tmp_path / "files",
    )


def _models_on_two_shards(cluster: LocalCluster) -> tuple[str, str]:
    """Two model names whose keys live on different primaries."""
    first = "tiny-0"
    port = cluster.port_of_slot(model_slot(first))
    other = next(f"tiny-{i}" for i in range(1, 100) if cluster.port_of_slot(model_slot(f"tiny-{i}")) != port)
    return first, other


@needs_cluster
def test_chat_on_a_cluster_streamed_and_not_with_models_on_two_shards(
    cluster: LocalCluster,
    cluster_settings: Settings,
    start_worker: Callable[..., RunningWorker],
    start_api: Callable[..., ApiServer],
) -> None:
    assert is_cluster(sync_client(cluster.url))
    first, second = _models_on_two_shards(cluster)
    start_worker(f"{first},{second}", cluster_settings)  # one worker, reading each slot apart
    api = start_api(cluster_settings)
    wait_for(lambda: len(httpx.get(f"{api.base_url}/v1/models").json()["data"]) == 2)
    client = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    for model in (first, second):
        whole = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)
        assert whole.usage is not None and whole.usage.completion_tokens == 8
        chunks = list(
            client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0, stream=True)
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == "length"
    # each model's stream is on the primary that serves its slot, and the two are different primaries
    keys = Keys(cluster_settings.key_prefix)
    ports = set()
    for model in (first, second):
        port = cluster.port_of_slot(model_slot(model))
        assert sync_client(f"redis://127.0.0.1:{port}").exists(keys.jobs(model))
        ports.add(port)
    assert len(ports) == 2
    # queuechat info reads the cluster: both models, their completed jobs
    view = snapshot(sync_client(cluster.url), keys)
    assert {q.model: q.completed for q in view.queues} == {first: 2, second: 2}
    assert [w.models for w in view.workers] == [[first, second]]
    # the Files API's records (a record and its index entry in one MULTI) on the cluster
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": first}}
    uploaded = client.files.create(file=("lines.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    assert [f.id for f in client.files.list()] == [uploaded.id]
    client.files.delete(uploaded.id)
    shown = CliRunner().invoke(app, ["info", "-u", cluster.url, "--key-prefix", cluster_settings.key_prefix, "--raw"])
    assert shown.exit_code == 0, shown.output
    assert f"queue {first} " in shown.output and f"queue {second} " in shown.output


@needs_cluster
def test_a_stream_is_resumed_by_its_id_alone_on_a_cluster(
    cluster_settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    """The API replica a client comes back to knows only the completion id: it finds the job's log on the shard of
    the job's model (the id carries its slot) and sends exactly the rest of the stream."""
    start_worker("tiny", cluster_settings)
    api = start_api(cluster_settings)
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 12, "stream": True}
    with httpx.stream("POST", f"{api.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = parse_sse(r.iter_lines())
    completion_id = json.loads(events[0].data)["id"]
    cut = len(events) // 2
    again = httpx.get(
        f"{api.base_url}/v1/chat/completions/{completion_id}/stream",
        headers={"Last-Event-ID": events[cut].id or ""},
        timeout=30,
    )
    assert again.status_code == 200, again.text
    rest = parse_sse(again.iter_lines())
    assert [(e.id, e.data) for e in rest] == [(e.id, e.data) for e in events[cut + 1 :]]


@needs_cluster
async def test_a_sigkilled_workers_jobs_are_taken_over_on_a_cluster(
    cluster: LocalCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two worker processes on the cluster, one SIGKILLed while streams are sending text: the other takes its jobs
    over (the reclaim reads the registry's slot and each job's log on its model's), and every request completes."""
    processes = Processes(cluster.url, tiny_model_dir, tmp_path)
    try:
        processes.start_worker("worker-a", slots=8)
        processes.start_worker("worker-b", slots=8)
        base_url = processes.start_api()
        victim = processes.wait_workers(2)[0]
        load = Load(base_url, max_tokens=256)
        requests = asyncio.create_task(load.run(streaming=6, plain=6))
        while load.first_tokens < 2 and not requests.done():
            await asyncio.sleep(0.01)
        assert not requests.done(), "the load finished before the fault could be injected"
        processes.worker_process(victim).send_signal(signal.SIGKILL)
        outcomes = await asyncio.wait_for(requests, timeout=120)
        assert [o for o in outcomes if not o.answered] == []
        assert processes.stats().get("reclaimed", 0) >= 1, "the killed worker held no job: the fault tested nothing"
    finally:
        processes.stop()


@needs_cluster
def test_the_batch_api_says_rq_needs_a_plain_redis_on_a_cluster(
    cluster: LocalCluster, cluster_settings: Settings, start_api: Callable[..., ApiServer]
) -> None:
    """rq cannot run on a Redis Cluster: the batch worker refuses to start on one, naming the problem, and the API
    answers a new batch with a 400 in OpenAI's shape rather than queuing a run no batch worker could ever take."""
    started = CliRunner().invoke(app, ["batch-worker", "--redis-url", cluster.url, "--burst"], env={"COLUMNS": "1000"})
    assert started.exit_code == 2, started.output
    assert "Redis Cluster" in started.output and "rq" in started.output
    api = start_api(cluster_settings)
    client = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny"}}
    uploaded = client.files.create(file=("lines.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    body = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    refused = httpx.post(f"{api.base_url}/v1/batches", json=body, timeout=30)
    assert refused.status_code == 400, refused.text
    error = openai_error(refused.json())
    assert "Redis Cluster" in error.message and "rq" in error.message
    assert httpx.get(f"{api.base_url}/v1/batches", timeout=30).json()["data"] == []  # nothing was queued
