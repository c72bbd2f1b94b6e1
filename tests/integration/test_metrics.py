"""Prometheus metrics of the API and of a worker, scraped after real traffic: the values move by what was served."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import ApiMetrics
from broker.connection import async_client, sync_client
from broker.consumer import Delivery, JobConsumer
from broker.embedded import EmbeddedValkey
from broker.keys import Keys
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Accepted, Delta, Done, FinishReason, Job, JobKind, Usage
from broker.settings import Settings
from serving.jobs import merged, submit_all
from tests.conftest import ApiServer, RunningWorker, Stack, free_port, wait_for
from tests.integration.test_info import _job

PROMPT = [{"role": "user", "content": "Count to ten."}]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=15)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def scrape_until(url: str, name: str, at_least: float, **labels: str) -> Samples:
    """Scrape until ``name`` reaches ``at_least`` (workers count a job just after its last event reached the API)."""

    def ready() -> Samples | None:
        samples = scrape(url)
        return samples if value(samples, name, **labels) >= at_least else None

    result: Samples = wait_for(ready)
    return result


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_api_metrics_move_by_what_was_served(stack: Stack) -> None:
    url = f"{stack.base_url}/metrics"
    before = scrape(url)
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    usages = [client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=5).usage for _ in range(3)]
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=7, stream=True, stream_options={"include_usage": True}
        )
    )
    usages.append(chunks[-1].usage)
    assert all(u is not None for u in usages)
    completion = sum(u.completion_tokens for u in usages if u)
    prompt = sum(u.prompt_tokens for u in usages if u)
    assert completion == 3 * 5 + 7
    requests = len(usages)
    tiny = {"model_name": "tiny"}

    after = scrape_until(url, "queuechat:jobs_total", 4, outcome="completed", **tiny)
    assert moved(before, after, "queuechat:generation_tokens_total", **tiny) == completion
    assert moved(before, after, "queuechat:prompt_tokens_total", **tiny) == prompt
    assert moved(before, after, "queuechat:request_success_total", finished_reason="length", **tiny) == requests
    assert moved(before, after, "queuechat:request_success_total", finished_reason="stop", **tiny) == 0
    for histogram in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert moved(before, after, f"queuechat:{histogram}_seconds_count", **tiny) == requests, histogram
        assert moved(before, after, f"queuechat:{histogram}_seconds_sum", **tiny) > 0, histogram
    # every token after a choice's first is one inter-token gap
    assert moved(before, after, "queuechat:inter_token_latency_seconds_count", **tiny) == completion - requests
    assert value(after, "queuechat:broker_up") == 1
    assert value(after, "queuechat:num_workers", **tiny) == 1
    assert value(after, "queuechat:num_requests_waiting", **tiny) == 0
    assert value(after, "queuechat:num_requests_running", **tiny) == 0
    assert value(after, "queuechat:jobs_total", outcome="completed", **tiny) == 4


def test_queue_gauges_come_from_the_streams(settings: Settings, start_api: Callable[..., ApiServer]) -> None:
    """Jobs queued for a model whose worker is stuck: waiting and running follow the stream's group."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    consumer = JobConsumer(client, keys, ["ghost"], "stuck")
    consumer.ensure_groups()
    card = WorkerCard(id="stuck", models=["ghost"], slots=4)
    WorkerRegistration(client, keys, card, ttl=60).heartbeat(WorkerStatus(state="busy", running=1))
    for _ in range(3):
        client.xadd(keys.jobs("ghost"), {"job": _job("ghost")})
    assert len(consumer.read(count=1, block_ms=None)) == 1
    api = start_api()
    samples = scrape(f"{api.base_url}/metrics")
    ghost = {"model_name": "ghost"}
    assert value(samples, "queuechat:num_requests_waiting", **ghost) == 2
    assert value(samples, "queuechat:num_requests_running", **ghost) == 1
    assert value(samples, "queuechat:num_workers", **ghost) == 1
    assert value(samples, "queuechat:num_worker_slots", **ghost) == 4
    assert value(samples, "queuechat:oldest_waiting_seconds", **ghost) >= 0


def test_scrape_answers_while_redis_is_down(start_api: Callable[..., ApiServer]) -> None:
    api = start_api(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    samples = scrape(f"{api.base_url}/metrics")
    assert value(samples, "queuechat:broker_up") == 0
    assert not any(name == "queuechat:num_requests_waiting" for name, _ in samples)


def test_worker_metrics_port(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    port = free_port()
    worker = start_worker(metrics_port=port, metrics_host="127.0.0.1")
    try:
        api = start_api()
        wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)
        assert value(before, "queuechat:num_worker_slots") == worker.worker.engine.slots
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 6}
        for _ in range(2):
            assert httpx.post(f"{api.base_url}/v1/completions", json=body, timeout=60).status_code == 200
        tiny = {"model_name": "tiny"}
        after = scrape_until(url, "queuechat:worker_jobs_total", 2, outcome="completed", **tiny)
        assert moved(before, after, "queuechat:worker_jobs_total", outcome="completed", **tiny) == 2
        assert moved(before, after, "queuechat:generation_tokens_total", **tiny) == 12
        assert moved(before, after, "queuechat:prompt_tokens_total", **tiny) > 0
        assert value(after, "queuechat:num_requests_running", **tiny) == 0
        assert value(after, "queuechat:num_requests_waiting", **tiny) == 0
    finally:
        assert worker.worker.metrics is not None
        worker.worker.metrics.close()


def _restarting_worker(settings: Settings, ready: threading.Event) -> None:
    """Runs one job, dies after 3 tokens (as far as the client can tell), and a second attempt answers 2 tokens."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    consumer = JobConsumer(client, Keys(settings.key_prefix), ["scripted"], "scripted")
    ready.set()
    items: list = []
    while not items:
        items = consumer.read(count=1, block_ms=100)
    [item] = items
    assert isinstance(item, Delivery)
    job_id = item.job.id
    consumer.publish(
        [
            (job_id, Accepted(seq=0, worker="first", attempt=1, prompt_tokens=4)),
            (job_id, Delta(seq=1, text="abc", token_ids=[1, 2, 3])),
            (job_id, Accepted(seq=0, worker="second", attempt=2, prompt_tokens=4)),
            (job_id, Delta(seq=1, text="de", token_ids=[4, 5])),
            (job_id, Done(seq=2, finish_reason=FinishReason.LENGTH, usage=Usage(prompt_tokens=4, completion_tokens=2))),
        ]
    )
    consumer.ack([item])


async def test_a_restarted_job_counts_once(settings: Settings) -> None:
    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    client = sync_client(settings.redis_url)
    JobConsumer(client, keys, ["scripted"], "scripted").ensure_groups()
    WorkerRegistration(client, keys, WorkerCard(id="second", models=["scripted"]), ttl=60).heartbeat(WorkerStatus())
    ready = threading.Event()
    thread = threading.Thread(target=_restarting_worker, args=(settings, ready), daemon=True)
    thread.start()
    ready.wait(10)
    metrics = ApiMetrics(settings.redis_url, keys)
    producer = Producer(async_client(settings.redis_url), settings)
    try:
        job = Job(kind=JobKind.COMPLETION, model="scripted", prompt="x", deadline=time.time() + 30)
        streams = await submit_all(producer, [job], metrics)
        texts = [e.text async for _, e in merged(streams) if isinstance(e, Delta)]
        for s in streams:
            s.close()
    finally:
        await producer.close()
        metrics.close()
        thread.join(10)
    assert texts == ["abc", "de"]  # the API passes the restart on; a non-streaming answer keeps only "de"
    scripted = {"model_name": "scripted"}
    sample = metrics.registry.get_sample_value
    assert sample("queuechat:generation_tokens_total", scripted) == 2
    assert sample("queuechat:prompt_tokens_total", scripted) == 4
    assert sample("queuechat:request_success_total", {**scripted, "finished_reason": "length"}) == 1
    for histogram in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert sample(f"queuechat:{histogram}_seconds_count", scripted) == 1, histogram
    # 2 tokens after each attempt's first: 2 of the first attempt, 1 of the second
    assert sample("queuechat:inter_token_latency_seconds_count", scripted) == 3


def test_head_metrics_answers_like_get_without_a_body(stack: Stack) -> None:
    """Probes (aiperf) ask HEAD /metrics before they scrape: it must be 200 with the scrape's content type."""
    response = httpx.head(f"{stack.base_url}/metrics", timeout=15)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content == b""


def test_a_scrape_answers_promptly_while_redis_stalls(start_api: Callable[..., ApiServer]) -> None:
    """A Redis that accepts connections but answers nothing (SIGSTOP): the scrape still answers, well within a 2 s
    scrape timeout (Prometheus scraping every 2 s), and says the broker is down."""
    with EmbeddedValkey() as server:
        assert server.pid
        api = start_api(Settings(redis_url=server.url, key_prefix="qcstall"))
        url = f"{api.base_url}/metrics"
        assert value(scrape(url), "queuechat:broker_up") == 1
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for _ in range(3):  # the connection the last scrape used, and fresh ones
                response = httpx.get(url, timeout=2.0)
                assert response.status_code == 200
                samples = {s.name: s.value for f in text_string_to_metric_families(response.text) for s in f.samples}
                assert samples["queuechat:broker_up"] == 0
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert value(scrape(url), "queuechat:broker_up") == 1  # and up again once Redis answers


def test_every_series_of_vllms_grafana_dashboard_is_exported(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    """A vLLM user's dashboard works after renaming vllm: to queuechat: each series it queries has data for the
    model after some traffic, on the API's /metrics or a worker's."""
    wanted = [
        line.strip().replace("vllm:", "queuechat:", 1)
        for line in (Path(__file__).parents[1] / "data" / "vllm_grafana_series.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    port = free_port()
    worker = start_worker(metrics_port=port, metrics_host="127.0.0.1")
    try:
        api = start_api()
        wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
        client = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=5)
        list(client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=6, stream=True))
        scrape_until(f"{api.base_url}/metrics", "queuechat:jobs_total", 2, outcome="completed", model_name="tiny")
        found = {
            name
            for url in (f"{api.base_url}/metrics", f"http://127.0.0.1:{port}/metrics")
            for name, labels in scrape(url)
            if ("model_name", "tiny") in labels
        }
        assert [name for name in wanted if name not in found] == []
    finally:
        assert worker.worker.metrics is not None
        worker.worker.metrics.close()


def test_a_worker_scrape_answers_promptly_while_redis_stalls(
    start_worker: Callable[..., RunningWorker], settings: Settings
) -> None:
    with EmbeddedValkey() as server:
        assert server.pid
        port = free_port()
        own = settings.model_copy(update={"redis_url": server.url})
        worker = start_worker(settings_=own, metrics_port=port, metrics_host="127.0.0.1")
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for(lambda: ("queuechat:num_requests_waiting", frozenset({("model_name", "tiny")})) in scrape(url))
            os.kill(server.pid, signal.SIGSTOP)
            try:
                response = httpx.get(url, timeout=2.0)  # a scrape every 2 s, its timeout as long
                assert response.status_code == 200
                assert "queuechat:num_worker_slots" in response.text  # the worker's own series are still there
            finally:
                os.kill(server.pid, signal.SIGCONT)
        finally:
            assert worker.worker.metrics is not None
            worker.worker.metrics.close()
