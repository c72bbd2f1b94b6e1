"""The Kubernetes manifests in deploy/k8s: valid against Kubernetes' schemas, and naming the same ports, drain time,
streams and consumer group as the code; the worker probe they run, against a real worker; the queue depth their
ScaledObjects scale on, against a real API and worker."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broker.connection import sync_client
from broker.keys import CONSUMER_GROUP, Keys
from broker.settings import Settings, WaitForWorker, parse_wait_for_worker
from broker.tenants import TenantLimits, TenantStore
from tests.conftest import ApiServer, RunningWorker, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
KEDA_SCALED_OBJECT = ("keda.sh/v1alpha1", "ScaledObject")
# The redis-streams scaler's metadata keys (keda.sh docs, scalers/redis-streams).
KEDA_REDIS_STREAMS_KEYS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username", "usernameFromEnv",
    "password", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount",
    "activationLagCount", "databaseIndex", "enableTLS", "unsafeSsl",
}  # fmt: skip


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """The documents a kustomization lists, resolving nested kustomizations (no patches are used here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            docs += kustomized(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


ALL_DOCS = kustomized(DEPLOY / "gpu")  # the GPU variant includes the base


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in ALL_DOCS if d["kind"] == kind]


def containers_of(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_every_file_is_listed_by_a_kustomization() -> None:
    listed = {p.name for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    named = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        named |= {Path(r).name for r in yaml.safe_load(kustomization.read_text())["resources"] if r.endswith(".yaml")}
    assert listed == named


@pytest.mark.parametrize("doc", [d for d in ALL_DOCS if (d["apiVersion"], d["kind"]) != KEDA_SCALED_OBJECT])
def test_manifests_are_valid_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# KEDA's prometheus scaler's metadata keys (keda.sh docs, scalers/prometheus) that these manifests may use.
KEDA_PROMETHEUS_KEYS = {"serverAddress", "query", "threshold", "activationThreshold", "ignoreNullValues", "unsafeSsl"}
# The one query shape the manifests use: the largest value of one series of the API's /metrics (every API replica
# reports the broker's state alike), which the live test below evaluates against a real API's scrape.
WAITING_QUERY = re.compile(r'max\((?P<metric>[a-z_:]+)\{model_name="(?P<model>[^"]+)"\}\)')


def triggers_of(obj: dict[str, Any], kind: str) -> list[dict[str, str]]:
    return [t["metadata"] for t in obj["spec"]["triggers"] if t["type"] == kind]


def test_scaled_objects_count_every_job_waiting_for_their_model() -> None:
    """The batch stream's group lag, and for interactive jobs a figure that counts the model's stream and every
    API key's fair-queuing streams: a redis-streams trigger on the model's stream alone would leave a model whose
    requests all come with keys at zero workers."""
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    scaled = of_kind("ScaledObject")
    assert scaled, "no ScaledObject"
    keys = Keys(DEPLOY_PREFIX)
    for obj in scaled:
        assert (obj["apiVersion"], obj["kind"]) == KEDA_SCALED_OBJECT
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        (container,) = containers_of(target)
        model = arg_after(container["args"], "--model-names")
        assert {t["type"] for t in obj["spec"]["triggers"]} == {"redis-streams", "prometheus"}
        streams = set()
        for meta in triggers_of(obj, "redis-streams"):
            assert set(meta) <= KEDA_REDIS_STREAMS_KEYS, set(meta) - KEDA_REDIS_STREAMS_KEYS
            assert meta["consumerGroup"] == CONSUMER_GROUP
            assert int(meta["lagCount"]) > 0 and int(meta["activationLagCount"]) >= 0
            # KEDA reads the variable from the scaled container's environment: it must be defined there
            assert meta["addressFromEnv"] in env_of(container)
            streams.add(meta["stream"])
        assert streams == {keys.batch_jobs(model)}  # the one stream every batch line of the model waits in
        (meta,) = triggers_of(obj, "prometheus")
        assert set(meta) <= KEDA_PROMETHEUS_KEYS, set(meta) - KEDA_PROMETHEUS_KEYS
        query = WAITING_QUERY.fullmatch(meta["query"])
        assert query and query["metric"] == "queuechat:num_requests_waiting" and query["model"] == model
        assert int(meta["threshold"]) > 0 and int(meta["activationThreshold"]) >= 0
        assert 0 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def waiting_figure(base_url: str, model: str, secret: str) -> float:
    """What the smollm2 ScaledObject's prometheus trigger reads, for ``model``, from a scrape of the API (with keys in
    Redis, /metrics wants one too: Prometheus scrapes with a key of its own)."""
    (obj,) = [o for o in of_kind("ScaledObject") if o["metadata"]["name"] == "queuechat-worker-smollm2"]
    (meta,) = triggers_of(obj, "prometheus")
    query = WAITING_QUERY.fullmatch(meta["query"])
    assert query
    scraped = text_string_to_metric_families(httpx.get(f"{base_url}/metrics", headers=bearer(secret), timeout=10).text)
    values = [
        s.value for f in scraped for s in f.samples if s.name == query["metric"] and s.labels == {"model_name": model}
    ]
    return max(values, default=0.0)


def test_the_scaling_figure_counts_jobs_waiting_in_every_keys_streams(
    settings: Settings, start_api: Callable[..., ApiServer], start_worker: Callable[..., RunningWorker]
) -> None:
    """Requests sent with API keys (each key a tenant with streams of its own) while no worker runs: the figure the
    interactive trigger reads counts them all (the model's own stream, which a redis-streams trigger reads, holds
    none of them), and falls back to 0 once a worker has started and served them."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    store = TenantStore(client, keys)
    secrets = [store.add("team-a", TenantLimits(weight=2)), store.add("team-b", TenantLimits())]
    scraper = store.add("prometheus", TenantLimits())
    waiting = settings.model_copy(update={"wait_for_worker": WaitForWorker(models={"tiny": 60})})
    api = start_api(waiting)
    statuses: list[int] = []

    def ask(secret: str) -> None:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        r = httpx.post(f"{api.base_url}/v1/chat/completions", json=body, headers=bearer(secret), timeout=90)
        statuses.append(r.status_code)

    sent = [secrets[i % 2] for i in range(5)]
    threads = [threading.Thread(target=ask, args=(s,), daemon=True) for s in sent]
    for thread in threads:
        thread.start()
    wait_for(lambda: waiting_figure(api.base_url, "tiny", scraper) == len(sent), timeout=30)
    assert client.xlen(keys.jobs("tiny")) == 0  # all in the keys' own streams
    assert len(client.hkeys(keys.fair_streams("tiny"))) == 2
    assert not statuses  # still waiting for a worker
    start_worker(settings_=waiting)
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * len(sent)
    wait_for(lambda: waiting_figure(api.base_url, "tiny", scraper) == 0, timeout=30)


def test_a_model_scaled_from_zero_is_declared_to_the_api() -> None:
    """minReplicaCount 0 works only if the API keeps the model's requests waiting while no worker runs (and accepts
    the model on a Redis no worker has registered it in yet): the API's settings declare it with a wait."""
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    (api,) = [d for d in of_kind("Deployment") if containers_of(d)[0]["args"][0] == "api"]
    api_env = env_of(containers_of(api)[0])
    wait = parse_wait_for_worker(api_env.get("QUEUECHAT_WAIT_FOR_WORKER", ""))
    timeout = float(api_env.get("QUEUECHAT_REQUEST_TIMEOUT", Settings.model_fields["request_timeout"].default))
    from_zero = [o for o in of_kind("ScaledObject") if o["spec"]["minReplicaCount"] == 0]
    assert from_zero, "no ScaledObject scales from zero"
    for obj in from_zero:
        (container,) = containers_of(deployments[obj["spec"]["scaleTargetRef"]["name"]])
        model = arg_after(container["args"], "--model-names")
        assert wait.declares(model), model
        # the request's deadline bounds the wait: a longer one would be a 504 instead of the wait's clear 503
        assert 0 < wait.seconds(model) <= timeout
        assert all(int(t["activationLagCount"]) == 0 for t in triggers_of(obj, "redis-streams"))
        assert all(int(t["activationThreshold"]) == 0 for t in triggers_of(obj, "prometheus"))


DEPLOY_PREFIX = yaml.safe_load((DEPLOY / "config.yaml").read_text())["data"]["QUEUECHAT_KEY_PREFIX"]
DEPLOY_DRAIN = float(yaml.safe_load((DEPLOY / "config.yaml").read_text())["data"]["QUEUECHAT_DRAIN_TIMEOUT"])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        (config,) = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == source["configMapRef"]["name"]]
        env.update(config["data"])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


def test_grace_periods_cover_the_drain_timeout() -> None:
    assert Settings.model_fields["drain_timeout"].default == DEPLOY_DRAIN
    for deployment in of_kind("Deployment"):
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        pre_stop = sum(
            c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            for c in containers_of(deployment)
        )
        assert grace >= DEPLOY_DRAIN + pre_stop + 5, deployment["metadata"]["name"]


def test_probes_and_scrapes_name_the_ports_the_processes_listen_on() -> None:
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]
        (container,) = containers_of(deployment)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        args = container["args"]
        assert env_of(container)["QUEUECHAT_REDIS_URL"] == "redis://$(REDIS_ADDRESS)/0"
        if "--port" in args:
            assert ports["http"] == int(arg_after(args, "--port"))
        if "--metrics-port" in args:
            assert ports["metrics"] == int(arg_after(args, "--metrics-port"))
        scrape_port = pod["metadata"].get("annotations", {}).get("prometheus.io/port")
        if scrape_port:
            assert int(scrape_port) in ports.values()
        if args[0] == "api":
            assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        if args[0] == "worker":
            for probe, check in (("startupProbe", "ready"), ("readinessProbe", "ready"), ("livenessProbe", "alive")):
                assert container[probe]["exec"]["command"] == ["python", "-m", "queuechat.probe", check]
    budgets = {tuple(sorted(b["spec"]["selector"]["matchLabels"].items())) for b in of_kind("PodDisruptionBudget")}
    for deployment in of_kind("Deployment"):
        if containers_of(deployment)[0]["args"][0] in ("api", "worker"):
            assert tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items())) in budgets


def probe(check: str, settings: Settings) -> int:
    command = [sys.executable, "-m", "queuechat.probe", check, "-u", str(settings.redis_url)]
    return subprocess.run([*command, "--key-prefix", settings.key_prefix], capture_output=True, timeout=60).returncode


def test_worker_probe_follows_the_registry(settings: Settings, start_worker: Callable[..., RunningWorker]) -> None:
    assert probe("ready", settings) == 1 and probe("alive", settings) == 1  # no worker on this host yet
    worker = start_worker()
    wait_for(lambda: probe("ready", settings) == 0, timeout=30)
    assert probe("alive", settings) == 0
    worker.worker.stopping.set()  # draining: no longer ready; then deregistered: no longer alive
    wait_for(lambda: probe("alive", settings) == 1, timeout=60)
    assert probe("ready", settings) == 1
