"""The Kubernetes manifests in deploy/k8s: valid against Kubernetes' schemas, and naming the same ports, drain time,
streams and consumer group as the code; the worker probe they run, against a real worker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from broker.keys import CONSUMER_GROUP, Keys
from broker.settings import Settings, parse_wait_for_worker
from tests.conftest import RunningWorker, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
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


def test_scaled_objects_read_the_streams_and_group_the_workers_serve() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    scaled = of_kind("ScaledObject")
    assert scaled, "no ScaledObject"
    keys = Keys(DEPLOY_PREFIX)
    for obj in scaled:
        assert (obj["apiVersion"], obj["kind"]) == KEDA_SCALED_OBJECT
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        (container,) = containers_of(target)
        model = arg_after(container["args"], "--model-names")
        streams = set()
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            meta = trigger["metadata"]
            assert set(meta) <= KEDA_REDIS_STREAMS_KEYS, set(meta) - KEDA_REDIS_STREAMS_KEYS
            assert meta["consumerGroup"] == CONSUMER_GROUP
            assert int(meta["lagCount"]) > 0 and int(meta["activationLagCount"]) >= 0
            # KEDA reads the variable from the scaled container's environment: it must be defined there
            assert meta["addressFromEnv"] in env_of(container)
            streams.add(meta["stream"])
        assert streams == {keys.jobs(model), keys.batch_jobs(model)}
        assert 0 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]


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
        assert all(int(t["metadata"]["activationLagCount"]) == 0 for t in obj["spec"]["triggers"])


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
