"""The Grafana dashboard and compose's monitoring profile: every metric the dashboard queries, with the labels it
groups by, is one the API or a worker exports after real traffic, and Prometheus scrapes the ports they serve."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from broker.tenants import TenantLimits, TenantStore
from tests.conftest import ApiServer, RunningWorker, free_port, wait_for
from tests.unit.test_compose import _compose

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "queuechat.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
METRIC = re.compile(r"queuechat:[A-Za-z0-9_:]+")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
# Labels Prometheus adds to every series (or a histogram has by itself), not the exporters.
SCRAPE_LABELS = {"instance", "job", "le"}


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def exported(*urls: str, headers: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Sample name -> label names, from scrapes of these endpoints."""
    names: dict[str, set[str]] = {}
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(url, headers=headers, timeout=15).text):
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_every_dashboard_query_finds_an_exported_metric(
    start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer], settings: Settings
) -> None:
    metrics_port = free_port()
    start_worker(metrics_port=metrics_port, metrics_host="127.0.0.1")
    api = start_api()
    # a key of a tenant, so the per-key panels have series to find
    key = TenantStore(sync_client(settings.redis_url or ""), Keys(settings.key_prefix)).add("team", TenantLimits())
    auth = {"Authorization": f"Bearer {key}"}
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models", headers=auth).json()["data"])
    client = OpenAI(base_url=f"{api.base_url}/v1", api_key=key, max_retries=0)
    for _ in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    ):
        pass
    worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
    wait_for(lambda: "queuechat:worker_jobs_total" in exported(worker_url))
    names = exported(f"{api.base_url}/metrics", worker_url, headers=auth)

    used = {name for expr in queries() for name in METRIC.findall(expr)}
    assert len(used) >= 12, used
    missing = sorted(used - set(names))
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    for expr in queries():
        labels = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",")} - SCRAPE_LABELS
        for name in METRIC.findall(expr):
            assert labels <= names[name], f"{expr}: {name} has no label {labels - names[name]}"


def test_monitoring_profile_mounts_the_files_and_scrapes_the_served_ports() -> None:
    done = _compose("--profile", "monitoring", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = json.loads(done.stdout)["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            assert Path(volume["source"]).exists(), volume
    scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    (api_job,) = [j for j in scrape if j["job_name"] == "queuechat-api"]
    assert api_job["static_configs"][0]["targets"] == [f"api:{arg_after(services['api']['command'], '--port')}"]
    (worker_job,) = [j for j in scrape if j["job_name"] == "queuechat-workers"]
    (dns,) = worker_job["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["port"] == int(arg_after(services["worker"]["command"], "--metrics-port"))


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]
