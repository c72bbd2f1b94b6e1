"""Batch lines run below interactive traffic, shown by order, never by time: the consumer reads the batch stream
only when the interactive one is empty, and a worker saturated by a batch starts an interactive job that arrives
later before the batch's lines that were waiting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from openai import OpenAI

from broker.connection import sync_client
from broker.consumer import Delivery, JobConsumer
from broker.keys import Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Job, JobKind, SamplingParams
from broker.settings import Settings
from tests.batch_support import BatchWorkers, batch_settings_of, chat_lines, upload, wait_batch
from tests.conftest import ApiServer, RunningWorker, wait_for


def _queue(client: redis.Redis, stream: str, prompt: str) -> str:
    job = Job(kind=JobKind.COMPLETION, model="m", prompt=prompt, params=SamplingParams(), deadline=time.time() + 60)
    client.xadd(stream, {"job": job.model_dump_json()})
    return prompt


def test_the_consumer_reads_batch_lines_only_when_no_interactive_job_waits(settings: Settings) -> None:
    assert settings.redis_url
    client, keys = sync_client(settings.redis_url), Keys(settings.key_prefix)
    consumer = JobConsumer(client, keys, ["m"], "w1", claim_min_idle=0.05)
    consumer.ensure_groups()
    for i in range(3):
        _queue(client, keys.batch_jobs("m"), f"batch-{i}")
    for i in range(2):
        _queue(client, keys.jobs("m"), f"chat-{i}")

    def prompts(items: list[Any]) -> list[str]:
        return [str(d.job.prompt) for d in items if isinstance(d, Delivery)]

    assert prompts(consumer.read(4, None)) == ["chat-0", "chat-1"]  # the batch's lines were queued first
    assert prompts(consumer.read(2, None)) == ["batch-0", "batch-1"]
    _queue(client, keys.jobs("m"), "chat-2")
    assert prompts(consumer.read(2, None)) == ["chat-2"]
    assert prompts(consumer.read(2, 100)) == ["batch-2"]
    # a dead worker's batch lines are taken over like its interactive jobs
    survivor = JobConsumer(client, keys, ["m"], "w2", claim_min_idle=0.05)
    WorkerRegistration(client, keys, WorkerCard(id="w2", models=["m"]), ttl=60).heartbeat(WorkerStatus())
    time.sleep(0.1)
    taken = survivor.reclaim(10).deliveries
    assert sorted(prompts(taken)) == ["batch-0", "batch-1", "batch-2", "chat-0", "chat-1", "chat-2"]
    assert [d.stream for d in taken][:3] == [keys.jobs("m")] * 3  # interactive ones first


class EventLog:
    """Every event of every job of a prefix, in the order the worker published them (one PSUBSCRIBE)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client  # keeps the pool alive: a collected client closes its connections
        self.keys = keys
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lost: Exception | None = None
        self._pubsub = client.pubsub()
        self._pubsub.psubscribe(keys.events("*"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.1)
            except redis.RedisError as exc:  # events would be missed: the order could not be trusted
                self.lost = exc
                return
            if message and message["type"] == "pmessage":
                job_id = self.keys.job_of_events(message["channel"])
                self.events.append((job_id, json.loads(message["data"])))

    def accepted(self, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
        return [(j, e) for j, e in self.events[start:] if e["type"] == "accepted"]

    def done(self) -> set[str]:
        return {j for j, e in self.events if e["type"] == "done"}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()


def test_an_interactive_job_overtakes_the_waiting_lines_of_a_batch(
    settings: Settings,
    tmp_path: Path,
    start_worker: Callable[..., RunningWorker],
    start_api: Callable[..., ApiServer],
    batch_workers: BatchWorkers,
) -> None:
    assert settings.redis_url
    start_worker(limit_worker_concurrency=2)
    api = start_api(batch_settings_of(settings, tmp_path / "files"))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    client = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=120)
    batch_workers.start()
    log = EventLog(sync_client(settings.redis_url), Keys(settings.key_prefix))
    try:
        # Two long lines (recognisable by their long prompts) fill both slots; the short ones wait behind them.
        lines = chat_lines(20, max_tokens=4)
        for line in lines[:2]:
            line["body"]["messages"][0]["content"] = "tell me a long story " * 20
            line["body"]["max_tokens"] = 600
        batch = client.batches.create(
            input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_for(lambda: len([j for j, e in log.accepted() if e["prompt_tokens"] > 60]) == 2, timeout=60)
        long_ones = [j for j, e in log.accepted() if e["prompt_tokens"] > 60]
        # With both slots taken by the long lines the worker reads nothing until one ends.
        before = len(log.events)
        assert not set(long_ones) & log.done(), "a long line ended before the interactive job was sent"
        answer = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        interactive = "job-" + answer.id.removeprefix("chatcmpl-")
        wait_batch(client, batch.id, timeout=300)
    finally:
        log.close()
    assert log.lost is None, f"the event log lost its connection: {log.lost}"
    later = [j for j, _ in log.accepted(before)]
    short_later = [j for j in later if j != interactive and j not in long_ones]
    print(f"\naccepted after the interactive job was sent: {len(later)} jobs, the first is the interactive one: "
          f"{later[:1] == [interactive]}; batch lines that were waiting: {len(short_later)}")  # fmt: skip
    assert short_later, "no batch line was waiting: the test tested nothing"
    assert later[0] == interactive
