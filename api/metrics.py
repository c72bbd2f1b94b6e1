"""``GET /metrics``: Prometheus metrics of the API, with vLLM's names under the ``queuechat:`` prefix.

Two kinds of metrics, from two sources:

- What this API process saw of its own requests (latencies, tokens, finish reasons), recorded by
  :class:`ApiMetrics`, a job observer (:class:`serving.jobs.JobObserver`) the routes hand to the serving layer.
  Every replica counts its own requests, so sum them across replicas.
- The state of the whole deployment, read from Redis at scrape time (:class:`BrokerCollector`): requests waiting in
  each model's stream (and their estimated tokens: what an autoscaler scales on) and running from it, live workers,
  job outcomes. Every replica reports the same values, so aggregate these with ``max``, not ``sum``. A scrape
  never fails because Redis is down: ``queuechat:broker_up`` says 0 and the Redis-derived series are left out.

Each app owns its :class:`~prometheus_client.CollectorRegistry`, so several apps in one process (tests) never
share series.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import redis
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.connection import sync_client
from broker.jobevents import JobEvents
from broker.keys import Keys
from broker.monitor import STAT_FIELDS, known_models, log_memory, snapshot
from broker.schemas import Accepted, AnyEvent, Delta, Done
from broker.tenants import usage_by_name

log = logging.getLogger(__name__)

PREFIX = "queuechat:"
# Scrapes come every few seconds; a SCAN of the whole keyspace for job streams need not.
MODEL_SCAN_SECONDS = 30.0
# A scrape must answer well within any scrape timeout (Prometheus': 10 s by default, as short as the interval when
# scraping every 2 s) even when Redis hangs: the scrape's Redis reads get half a second each and are never retried
# (a client's retries would multiply the wait), so a stalled Redis is `broker_up 0` in 0.5 s, not a failed scrape.
SCRAPE_REDIS_TIMEOUT = 0.5

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
# Token counts per request, 1-2-5 steps up to 100k (vLLM's histograms of request lengths take the same shape).
TOKEN_BUCKETS = tuple(float(m * 10**e) for e in range(6) for m in (1, 2, 5) if m * 10**e <= 100_000)

router = APIRouter()


@dataclass
class _Timing:
    """What one job's events have shown so far (monotonic seconds)."""

    submitted: float
    accepted: bool = False
    first_token: bool = False
    last_token: dict[int, float] = field(default_factory=dict)  # per choice index
    accepted_at: float = 0.0
    first_token_at: float = 0.0
    generated: dict[int, int] = field(default_factory=dict)  # completion tokens per finished choice


class ApiMetrics:
    """The API's registry: request latencies and token counts observed here, plus the broker's state at scrape."""

    def __init__(self, redis_url: str, keys: Keys, declared: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Seconds from the request's arrival to its first generated token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Seconds between two generated tokens of a choice, as the API received them.",
            labels,
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        # vLLM's older name for the same observations, which vLLM's Grafana dashboard still queries
        self.tpot = Histogram(
            PREFIX + "time_per_output_token_seconds",
            "Seconds between two generated tokens of a choice (the same as inter_token_latency_seconds).",
            labels,
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self.prefill_time = Histogram(
            PREFIX + "request_prefill_time_seconds",
            "Seconds from a worker's accepting the request to its first token.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.decode_time = Histogram(
            PREFIX + "request_decode_time_seconds",
            "Seconds from the request's first token to its last.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.request_prompt_tokens = Histogram(
            PREFIX + "request_prompt_tokens",
            "Prompt tokens per accepted request.",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.request_generation_tokens = Histogram(
            PREFIX + "request_generation_tokens",
            "Generated tokens per finished request (all its choices).",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.request_max_tokens = Histogram(
            PREFIX + "request_max_num_generation_tokens",
            "The max_tokens of each accepted request that set one (vLLM: requested generation tokens).",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Seconds from the request's arrival to its last token.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            PREFIX + "request_queue_time_seconds",
            "Seconds from the request's arrival until a worker accepted it.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of accepted requests.", labels, registry=self.registry
        )
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens",
            "Generated tokens of the finished choices (their usage).",
            labels,
            registry=self.registry,
        )
        self.success = Counter(
            PREFIX + "request_success",
            "Finished choices, by finish reason.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        scrape_client = sync_client(redis_url, command_timeout=SCRAPE_REDIS_TIMEOUT)
        scrape_client.set_retry(Retry(NoBackoff(), 0))
        self.broker = BrokerCollector(scrape_client, keys, declared)
        self.registry.register(self.broker)
        # each watched job's timing, released with the job's events object (whatever way the request ended)
        self._timings: weakref.WeakKeyDictionary[JobEvents, _Timing] = weakref.WeakKeyDictionary()

    def job_submitted(self, events: JobEvents, submitted: float) -> None:
        """Start timing a job that was submitted at ``submitted`` (``time.monotonic()``)."""
        self._timings[events] = _Timing(submitted)

    def job_event(self, events: JobEvents, event: AnyEvent) -> None:
        timing = self._timings.get(events)
        if timing is None:
            return
        model = events.job.model
        now = time.monotonic()
        if isinstance(event, Accepted):
            if timing.accepted:
                # A worker died and another runs the job from the start: its first tokens follow no earlier token.
                timing.last_token.clear()
            else:
                timing.accepted = True
                timing.accepted_at = now
                self.queue_time.labels(model).observe(now - timing.submitted)
                self.prompt_tokens.labels(model).inc(event.prompt_tokens)
                self.request_prompt_tokens.labels(model).observe(event.prompt_tokens)
                if events.job.params.max_tokens is not None:
                    self.request_max_tokens.labels(model).observe(events.job.params.max_tokens)
        elif isinstance(event, Delta) and event.token_ids:
            count = len(event.token_ids)
            if not timing.first_token:
                timing.first_token = True
                timing.first_token_at = now
                self.ttft.labels(model).observe(now - timing.submitted)
                self.prefill_time.labels(model).observe(now - (timing.accepted_at or timing.submitted))
            previous = timing.last_token.get(event.index)
            # Tokens that arrive with a choice's first token follow it without delay; several tokens in one event
            # (a busy worker batches steps) share the gap between them.
            gaps = [0.0] * (count - 1) if previous is None else [(now - previous) / count] * count
            for gap in gaps:
                self.itl.labels(model).observe(gap)
                self.tpot.labels(model).observe(gap)
            timing.last_token[event.index] = now
        elif isinstance(event, Done):
            # Counted from the choice's usage, so a run that was restarted on another worker counts once.
            self.generation_tokens.labels(model).inc(event.usage.completion_tokens)
            self.success.labels(model, event.finish_reason.value).inc()
            timing.generated[event.index] = event.usage.completion_tokens
            if events.finished:
                self.e2e.labels(model).observe(now - timing.submitted)
                if timing.first_token:
                    self.decode_time.labels(model).observe(now - timing.first_token_at)
                self.request_generation_tokens.labels(model).observe(sum(timing.generated.values()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.broker.client.close()


class BrokerCollector(Collector):
    """The deployment's queues and workers, read from Redis when Prometheus scrapes (never raises)."""

    def __init__(self, client: redis.Redis, keys: Keys, declared: Sequence[str] = ()) -> None:
        self.client = client
        self.keys = keys
        # models declared for scale from zero (wait_for_worker): always listed, so the first jobs waiting for a
        # worker show from the first scrape on, not only once the next SCAN finds their new stream
        self.declared = list(declared)
        self._models: list[str] = []
        self._scanned = -MODEL_SCAN_SECONDS
        self._logs: tuple[int, int] = (0, 0)

    def _known_models(self) -> list[str]:
        if time.monotonic() - self._scanned >= MODEL_SCAN_SECONDS:
            self._models = sorted(set(known_models(self.client, self.keys)) | set(self.declared))
            self._logs = log_memory(self.client, self.keys)  # a SCAN too: as seldom
            self._scanned = time.monotonic()
        return self._models

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "broker_up", "1 when Redis answered this scrape, else 0.")
        try:
            snap = snapshot(self.client, self.keys, known=self._known_models())
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape: Redis unreachable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        labels = ["model_name"]
        waiting = GaugeMetricFamily(
            PREFIX + "num_requests_waiting",
            "Requests queued for a worker (the stream's undelivered jobs).",
            labels=labels,
        )
        running = GaugeMetricFamily(
            PREFIX + "num_requests_running", "Requests taken by a worker and not finished yet.", labels=labels
        )
        waiting_tokens = GaugeMetricFamily(
            PREFIX + "num_tokens_waiting",
            "Estimated tokens of the queued requests: prompt (token ids exactly, text at 4 characters a token) plus "
            "max_tokens of each choice where set. With num_requests_waiting, what an autoscaler scales on.",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            PREFIX + "oldest_waiting_seconds", "Age of the oldest queued request (0 when none waits).", labels=labels
        )
        workers = GaugeMetricFamily(PREFIX + "num_workers", "Live workers serving the model.", labels=labels)
        slots = GaugeMetricFamily(PREFIX + "num_worker_slots", "Sequences the live workers run at once.", labels=labels)
        jobs = CounterMetricFamily(
            PREFIX + "jobs", "Jobs of the model by outcome, counted by the workers.", labels=[*labels, "outcome"]
        )
        by_key = GaugeMetricFamily(
            PREFIX + "key_requests_waiting",
            "Requests queued for a worker, by API key (key_name empty: requests without a key), once keys queue "
            "jobs of their own (fair queuing).",
            labels=[*labels, "key_name"],
        )
        for q in snap.queues:
            for key_name, count in sorted(q.waiting_by_key.items()):
                by_key.add_metric([q.model, key_name], count)
            waiting.add_metric([q.model], q.waiting)
            waiting_tokens.add_metric([q.model], q.waiting_tokens)
            running.add_metric([q.model], q.running)
            oldest.add_metric([q.model], q.oldest_waiting_s or 0.0)
            workers.add_metric([q.model], q.workers)
            slots.add_metric([q.model], q.slots)
            for outcome in STAT_FIELDS:
                if not outcome.endswith("_tokens"):
                    jobs.add_metric([q.model, outcome], getattr(q, outcome))
        logs = GaugeMetricFamily(PREFIX + "event_logs", "Jobs' event logs in Redis (read at most every 30 s).")
        logs.add_metric([], self._logs[0])
        log_bytes = GaugeMetricFamily(PREFIX + "event_log_bytes", "Memory of the jobs' event logs (MEMORY USAGE).")
        log_bytes.add_metric([], self._logs[1])
        yield from (waiting, waiting_tokens, by_key, running, oldest, workers, slots, jobs, logs, log_bytes)
        yield from self._tenants()

    def _tenants(self) -> Iterator[Metric]:
        """Each API key's usage, labelled by the key's name (never its secret), from ``queuechat keys``."""
        try:
            usage = usage_by_name(self.client, self.keys)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape: cannot read the tenants' usage (%s)", exc)
            return
        families = {
            "requests": CounterMetricFamily(
                PREFIX + "key_requests", "Requests admitted under each API key.", labels=["key_name"]
            ),
            "rejected": CounterMetricFamily(
                PREFIX + "key_rate_limited_requests",
                "Requests refused (429) by the key's limits.",
                labels=["key_name"],
            ),
            "prompt_tokens": CounterMetricFamily(
                PREFIX + "key_prompt_tokens", "Prompt tokens of each key's jobs.", labels=["key_name"]
            ),
            "completion_tokens": CounterMetricFamily(
                PREFIX + "key_generation_tokens", "Generated tokens of each key's jobs.", labels=["key_name"]
            ),
        }
        for name, counts in usage.items():
            for field_name, family in families.items():
                family.add_metric([name], counts.get(field_name, 0))
        yield from families.values()


# HEAD too: probes (aiperf's among them) ask with HEAD before they scrape, and a 405 reads as "no metrics here".
@router.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
def metrics_endpoint(request: Request) -> Response:
    # A plain def: FastAPI runs it in a thread, so the blocking Redis reads of a scrape never stall the event loop.
    metrics: ApiMetrics = request.app.state.metrics
    if request.method == "HEAD":
        # the headers a GET would send, without rendering (no Redis reads) and without a body
        return Response(media_type=CONTENT_TYPE_LATEST)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
