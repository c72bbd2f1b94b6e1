"""Scale from zero: a request for a known model with no live worker waits in its queue (QUEUECHAT_WAIT_FOR_WORKER)
for an autoscaler to start one, instead of failing at once; past the wait it is a 503 and no worker runs it later."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.connection import async_client, sync_client
from broker.consumer import JobConsumer
from broker.keys import Keys
from broker.monitor import snapshot
from broker.producer import Producer
from broker.schemas import Job, JobKind, SamplingParams
from broker.settings import InvalidSettings, Settings, WaitForWorker, parse_wait_for_worker
from broker.waiting import job_tokens
from tests.conftest import ApiServer, RunningWorker, wait_for

REPO = Path(__file__).resolve().parents[2]
PROMPT = [{"role": "user", "content": "hello there"}]
REQUESTS = 20
WORKER_LATE_S = 5.0


def _ask(base_url: str, index: int) -> tuple[int, str]:
    """One request of the mix: chat or completions, streamed or not; its status and its whole text."""
    stream = index % 2 == 1
    if index % 4 < 2:
        path, body = "/v1/chat/completions", {"messages": PROMPT}
    else:
        path, body = "/v1/completions", {"prompt": "hello there"}
    body.update(model="tiny", max_tokens=4, stream=stream)
    with httpx.Client(timeout=60) as client:
        if not stream:
            r = client.post(base_url + path, json=body)
            return r.status_code, r.text
        with client.stream("POST", base_url + path, json=body) as r:
            return r.status_code, r.read().decode()


def _metric(base_url: str, name: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=10).text)
    samples = [s for f in families for s in f.samples if s.name == name and s.labels.get("model_name") == "tiny"]
    return samples[0].value if samples else 0.0


def test_requests_wait_for_a_worker_that_starts_after_them(
    settings: Settings, start_api: Callable[..., ApiServer], start_worker: Callable[..., RunningWorker]
) -> None:
    # A fresh Redis: no worker ever served "tiny", so only its declaration makes it known.
    waiting = settings.model_copy(update={"wait_for_worker": WaitForWorker(models={"tiny": 45})})
    api = start_api(waiting)
    results: dict[int, tuple[int, str]] = {}

    def ask(index: int) -> None:
        results[index] = _ask(api.base_url, index)

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(REQUESTS)]
    sent = time.monotonic()
    for thread in threads:
        thread.start()
    # all of them wait in the stream, counted where an autoscaler looks (and estimated in tokens)
    wait_for(lambda: _metric(api.base_url, "queuechat:num_requests_waiting") == REQUESTS, timeout=20)
    assert _metric(api.base_url, "queuechat:num_tokens_waiting") >= REQUESTS * 4  # max_tokens 4 each, at least
    assert not results  # none was answered while no worker was there
    time.sleep(max(WORKER_LATE_S - (time.monotonic() - sent), 0))
    start_worker(settings_=waiting)
    for thread in threads:
        thread.join(50)
    assert sorted(results) == list(range(REQUESTS))
    for index, (status, text) in sorted(results.items()):
        assert status == 200, (index, text)
        if index % 2:
            assert text.rstrip().endswith("data: [DONE]"), text
        else:
            assert json.loads(text)["usage"]["completion_tokens"] > 0


def _known_without_worker(settings: Settings) -> None:
    """The model "tiny" as a worker leaves it when it stops: its stream and group exist, no worker is live."""
    JobConsumer(sync_client(settings.redis_url), Keys(settings.key_prefix), ["tiny"], "gone").ensure_groups()


def test_without_a_wait_no_worker_is_503_at_once(settings: Settings, start_api: Callable[..., ApiServer]) -> None:
    _known_without_worker(settings)
    api = start_api(settings)  # wait_for_worker 0, the default
    r = httpx.post(f"{api.base_url}/v1/chat/completions", json={"model": "tiny", "messages": PROMPT}, timeout=30)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_worker_available"
    assert "right now" in r.json()["error"]["message"]
    assert snapshot(sync_client(settings.redis_url), Keys(settings.key_prefix)).waiting == 0  # never queued
    # a model neither in a stream nor declared is unknown, as before
    r = httpx.post(f"{api.base_url}/v1/chat/completions", json={"model": "other", "messages": PROMPT}, timeout=30)
    assert r.status_code == 404


def test_past_the_wait_a_503_and_no_worker_runs_the_job_later(
    settings: Settings, start_api: Callable[..., ApiServer], start_worker: Callable[..., RunningWorker]
) -> None:
    _known_without_worker(settings)
    short = settings.model_copy(update={"wait_for_worker": parse_wait_for_worker("2")})
    api = start_api(short)
    answers = [_ask(api.base_url, 0), _ask(api.base_url, 1)]  # not streamed, streamed
    for status, text in answers:
        assert status == 503, text
        error = json.loads(text)["error"]
        assert error["code"] == "no_worker_available"
        assert "within 2 s" in error["message"] and "QUEUECHAT_WAIT_FOR_WORKER" in error["message"]
    client, keys = sync_client(settings.redis_url), Keys(settings.key_prefix)
    assert snapshot(client, keys).waiting == 2  # still in the stream, given up on
    running = start_worker(settings_=short)
    # The worker reads both and skips them: counted cancelled, never started or completed.
    wait_for(lambda: snapshot(client, keys).queues[0].cancelled == 2, timeout=30)
    queue = snapshot(client, keys).queues[0]
    assert (queue.waiting, queue.running, queue.completed) == (0, 0, 0)
    assert running.worker.totals["completed"] == 0


def test_a_client_that_leaves_while_waiting_is_not_answered_later(
    settings: Settings, start_api: Callable[..., ApiServer], start_worker: Callable[..., RunningWorker]
) -> None:
    waiting = settings.model_copy(update={"wait_for_worker": parse_wait_for_worker("tiny=45")})
    api = start_api(waiting)
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 4}
    with pytest.raises(httpx.ReadTimeout):  # it waits for a worker: the client gives up first
        httpx.post(f"{api.base_url}/v1/chat/completions", json=body, timeout=1.5)
    client, keys = sync_client(settings.redis_url), Keys(settings.key_prefix)
    # its front server marks the job cancelled (the client left), before any worker runs
    wait_for(lambda: list(client.scan_iter(match=f"{settings.key_prefix}:cancel:*")))
    running = start_worker(settings_=waiting)
    wait_for(lambda: snapshot(client, keys).queues[0].cancelled == 1, timeout=30)
    assert snapshot(client, keys).queues[0].completed == 0
    assert running.worker.totals["completed"] == 0


def test_waiting_tokens_are_estimated_from_the_queued_job() -> None:
    later = time.time() + 60
    ids = Job(
        kind=JobKind.COMPLETION, model="m", prompt=[1, 2, 3], params=SamplingParams(max_tokens=5, n=2), deadline=later
    )
    assert job_tokens(ids.model_dump_json()) == 3 + 10
    # no max_tokens: the prompt alone
    text = Job(kind=JobKind.CHAT, model="m", messages=[{"role": "user", "content": "x" * 40}], deadline=later)
    assert job_tokens(text.model_dump_json()) == 10 + 1  # "user" counts too
    assert job_tokens(b"not json") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", WaitForWorker(default=30)),
        ("smollm2=300", WaitForWorker(models={"smollm2": 300})),
        (" smollm2=300, org/model:v1=0.5 ,10", WaitForWorker(default=10, models={"smollm2": 300, "org/model:v1": 0.5})),
        ("", WaitForWorker()),
    ],
)
def test_the_wait_is_global_and_per_model(text: str, expected: WaitForWorker) -> None:
    assert parse_wait_for_worker(text) == expected


@pytest.mark.parametrize("text", ["abc", "-1", "tiny=", "=5", "tiny=inf", "1,2", "tiny=1,tiny=2", "tiny=nan"])
def test_a_bad_wait_is_refused_naming_the_variable(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUECHAT_WAIT_FOR_WORKER", text)
    with pytest.raises(InvalidSettings, match="QUEUECHAT_WAIT_FOR_WORKER: "):
        Settings.load("redis://127.0.0.1:1", running=False)


def test_the_api_does_not_start_with_a_bad_wait() -> None:
    env: dict[str, Any] = {**os.environ, "PYTHONPATH": str(REPO), "QUEUECHAT_WAIT_FOR_WORKER": "tiny=soon"}
    command = [sys.executable, "-m", "api", "--redis-url", "redis://127.0.0.1:1", "--port", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "QUEUECHAT_WAIT_FOR_WORKER" in done.stderr and "'tiny=soon' is not a wait" in done.stderr


async def test_a_batch_line_waits_where_the_autoscaler_reads_the_batch_lag(
    settings: Settings, start_worker: Callable[..., RunningWorker]
) -> None:
    waiting = settings.model_copy(update={"wait_for_worker": parse_wait_for_worker("tiny=45")})
    producer = Producer(async_client(settings.redis_url), waiting)
    params = SamplingParams(max_tokens=3)
    job = Job(kind=JobKind.COMPLETION, model="tiny", prompt="hello", params=params, deadline=time.time() + 60)
    try:
        events = await producer.submit(job, low_priority=True)
        keys = Keys(settings.key_prefix)
        # the batch stream has the workers' group before any worker ran: its lag counts the line
        (group,) = sync_client(settings.redis_url).xinfo_groups(keys.batch_jobs("tiny"))
        assert group["lag"] == 1
        await asyncio.to_thread(start_worker, settings_=waiting)
        async with events:
            kinds = [type(e).__name__ async for e in events]
        assert kinds[0] == "Accepted" and kinds[-1] == "Done"
    finally:
        await producer.close()
