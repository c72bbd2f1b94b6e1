"""A client that gives up on a request (a client timeout, a closed connection) has its job cancelled: stopped
while it runs, skipped while it is queued, streamed or not."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, Stack, wait_for

# The tiny model never ends a sequence by itself: at a few hundred tokens a second this runs for many seconds.
LONG = 4000


def _stats(settings: Settings) -> dict[str, int]:
    assert settings.redis_url
    raw = sync_client(settings.redis_url).hgetall(Keys(settings.key_prefix).stats("tiny"))
    return {k.decode(): int(v) for k, v in raw.items()}


def _cancel_marks(settings: Settings) -> int:
    """How many jobs the API has marked cancelled because their client hung up."""
    assert settings.redis_url
    marks = sync_client(settings.redis_url).scan_iter(match=f"{settings.key_prefix}:cancel:*")
    return sum(1 for _ in marks)


def _wait_cancelled(stack: Stack, settings: Settings) -> None:
    """The job was cancelled: stopped while it ran, or skipped by the worker if the client left before it began (on
    a loaded machine one second may pass before a worker takes the job); either way the model's counters say so."""
    worker = stack.worker.worker
    wait_for(lambda: _stats(settings).get("cancelled", 0) == 1 and not worker.jobs, timeout=90)


def _client(base_url: str, timeout: float) -> openai.OpenAI:
    # no retries: openai-python's default two would send the same job again after each timeout
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=timeout, max_retries=0)


def _time_out(endpoint: str, base_url: str, *, stream: bool = False, timeout: float = 1.0) -> None:
    """A request whose client gives up after ``timeout`` seconds."""
    client = _client(base_url, timeout)
    with pytest.raises(openai.APITimeoutError):
        if endpoint == "chat":
            answer: Any = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=LONG, stream=stream
            )
        else:
            answer = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=LONG, stream=stream)
        for _ in answer if stream else ():
            pass


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_non_streaming_client_that_times_out_stops_its_job(stack: Stack, settings: Settings, endpoint: str) -> None:
    _time_out(endpoint, stack.base_url)
    _wait_cancelled(stack, settings)
    stats = _stats(settings)
    assert stats.get("completed", 0) == 0
    assert stats["output_tokens"] < LONG


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "tiny", "max_tokens": LONG, "messages": [{"role": "user", "content": "A story"}]}),
        ("/v1/responses", {"model": "tiny", "max_output_tokens": LONG, "input": "A story", "store": False}),
    ],
)
def test_a_messages_or_responses_client_that_times_out_stops_its_job(
    stack: Stack, settings: Settings, path: str, body: dict[str, Any]
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}{path}", json=body, timeout=httpx.Timeout(60, read=1.0))
    _wait_cancelled(stack, settings)
    assert _stats(settings).get("completed", 0) == 0


@pytest.fixture
def one_slot(
    start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> Iterator[tuple[RunningWorker, ApiServer]]:
    """A worker that runs one job at a time, kept busy by a stream the test ends with ``blocker.set()``."""
    worker = start_worker(limit_worker_concurrency=1)
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    yield worker, api


def _block(base_url: str, release: threading.Event) -> threading.Thread:
    """A stream that holds the worker's one slot until ``release`` is set, then hangs up."""

    def run() -> None:
        body = {"model": "tiny", "prompt": "hold", "max_tokens": LONG, "stream": True}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
            for _ in r.iter_lines():
                if release.is_set():
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("endpoint", "stream"), [("chat", False), ("completions", False), ("chat", True)])
def test_a_queued_job_whose_client_left_is_skipped(
    one_slot: tuple[RunningWorker, ApiServer], settings: Settings, endpoint: str, stream: bool
) -> None:
    running, api = one_slot
    worker = running.worker
    release = threading.Event()
    blocker = _block(api.base_url, release)
    wait_for(lambda: worker.jobs, timeout=10)
    _time_out(endpoint, api.base_url, stream=stream)  # queued behind the blocker all along
    # The API marks the job cancelled once it sees the hang-up; on a loaded machine that can come after the client
    # gave up, so the slot is freed only once the mark is there (or the job would be started, then stopped).
    wait_for(lambda: _cancel_marks(settings) == 1, timeout=10)
    release.set()
    blocker.join(30)
    # The blocker ran and was cancelled when it hung up; the job of the client that left while it was queued
    # was never started (skipped at admission: counted cancelled in the stats, but never a running job).
    wait_for(lambda: _stats(settings).get("cancelled", 0) == 2 and not worker.jobs, timeout=30)
    assert worker.totals["cancelled"] == 1
    assert _stats(settings).get("completed", 0) == 0
