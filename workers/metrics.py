"""A worker's own Prometheus metrics, served on ``--metrics-port`` (vLLM's names under ``queuechat:``).

What this worker did (tokens, jobs by outcome) is counted as the consume loop acknowledges jobs; what it is doing
now (running sequences, free slots) and its models' backlog are read when Prometheus scrapes. Counters here and on
the API count the same tokens from two sides: sum one or the other, not both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import redis
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.keys import Keys
from broker.monitor import snapshot

log = logging.getLogger(__name__)

PREFIX = "queuechat:"
OUTCOMES = ("completed", "failed", "cancelled", "expired", "dead", "reclaimed", "continued")


# A scrape answers within any scrape timeout even when Redis stalls: its reads (the backlog) get half a second and
# are never retried, and the series read from Redis are then left out (the worker's own ones are still served).
SCRAPE_REDIS_TIMEOUT = 0.5


def scrape_client(url: str) -> redis.Redis:
    """A client of its own for scrapes, apart from the consume loop's (whose reads block for seconds)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from broker.connection import sync_client

    client = sync_client(url, command_timeout=SCRAPE_REDIS_TIMEOUT)
    client.set_retry(Retry(NoBackoff(), 0))
    return client


class Serving(Protocol):
    """What the metrics read from the running worker (a :class:`workers.service.ModelWorker`)."""

    @property
    def jobs(self) -> Mapping[str, Any]:  # job id -> running job with a ``.job.model``
        ...


class WorkerMetrics:
    def __init__(self, worker: Serving, client: redis.Redis, keys: Keys, models: list[str], slots: int) -> None:
        self.registry = CollectorRegistry()
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of the jobs this worker finished.", ["model_name"],
            registry=self.registry,
        )  # fmt: skip
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Tokens this worker generated for the jobs it finished.", ["model_name"],
            registry=self.registry,
        )  # fmt: skip
        self.jobs = Counter(
            PREFIX + "worker_jobs", "Jobs this worker acknowledged, by outcome.", ["model_name", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_LiveCollector(worker, client, keys, models, slots))
        self._server: Any = None

    def count(self, counters: Mapping[str, Mapping[str, int]]) -> None:
        """Add what the consume loop counts into the stats hashes ({model: {field: n}}) to this worker's metrics."""
        for model, fields in counters.items():
            for name, value in fields.items():
                if not value:
                    continue
                if name == "prompt_tokens":
                    self.prompt_tokens.labels(model).inc(value)
                elif name == "output_tokens":
                    self.generation_tokens.labels(model).inc(value)
                elif name in OUTCOMES:
                    self.jobs.labels(model, name).inc(value)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _LiveCollector(Collector):
    """Running sequences and free slots of this worker, and its models' backlog, at scrape time."""

    def __init__(self, worker: Serving, client: redis.Redis, keys: Keys, models: list[str], slots: int) -> None:
        self.worker = worker
        self.client = client
        self.keys = keys
        self.models = models
        self.slots = slots

    def _kv_cache(self) -> Iterator[Metric]:
        """The used fraction of the engine's KV cache, under vLLM's current name and the older one its Grafana
        dashboard queries; absent for engines that do not say (embeddings, vLLM with its engine core in a process
        of its own)."""
        usage_of = getattr(getattr(self.worker, "engine", None), "kv_cache_usage", None)
        usage = usage_of() if callable(usage_of) else None
        if usage is None:
            return
        for name in ("kv_cache_usage_perc", "gpu_cache_usage_perc"):
            gauge = GaugeMetricFamily(
                PREFIX + name, "Used fraction of this worker's KV cache (1 = full).", labels=["model_name"]
            )
            for model in self.models:
                gauge.add_metric([model], usage)
            yield gauge

    def collect(self) -> Iterator[Metric]:
        running_jobs = list(self.worker.jobs.values())  # a copy: the consume loop changes the dict meanwhile
        running = GaugeMetricFamily(
            PREFIX + "num_requests_running", "Requests this worker is generating now.", labels=["model_name"]
        )
        for model in self.models:
            running.add_metric([model], sum(1 for r in running_jobs if r.job.model == model))
        yield running
        slots = GaugeMetricFamily(PREFIX + "num_worker_slots", "Sequences this worker runs at once.")
        slots.add_metric([], self.slots)
        yield slots
        yield from self._kv_cache()
        try:
            snap = snapshot(self.client, self.keys, self.models)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape: Redis unreachable (%s)", exc)
            return
        waiting = GaugeMetricFamily(
            PREFIX + "num_requests_waiting",
            "Requests queued for any worker of the model (the stream's undelivered jobs).",
            labels=["model_name"],
        )
        for q in snap.queues:
            waiting.add_metric([q.model], q.waiting)
        yield waiting
