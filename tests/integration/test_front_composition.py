"""How a front process is put together: what ``queuechat info`` loads, one producer shared by the API and the
mounted web UI, one log line per API request, and the client's request id carried into the job."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import httpx
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.settings import MissingRedisUrl, Settings
from tests.conftest import ApiServer, Stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
# What a process that only reads Redis must not load: the web stack, the model stack, rq.
HEAVY = ("fastapi", "starlette", "uvicorn", "gradio", "torch", "transformers", "rq", "prometheus_client")


def test_queuechat_info_loads_no_web_model_or_queue_stack(settings: Settings) -> None:
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from queuechat.cli import app\n"
        f"result = CliRunner().invoke(app, ['info', '--json', '-u', {settings.redis_url!r},"
        f" '--key-prefix', {settings.key_prefix!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "json.loads(result.stdout.splitlines()[0])\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


async def test_the_mounted_web_ui_uses_the_apis_producer(settings: Settings) -> None:
    """One producer per process: the UI mounted into the API submits through the API's (made in its lifespan)."""
    from queuechat.compose import create_app

    app = create_app(settings, webui=True)
    backend = app.state.webui_backend
    async with app.router.lifespan_context(app):
        assert backend.producer is app.state.producer
    assert backend._producer is None  # it never made one of its own


def test_a_front_process_without_a_redis_url_says_so_once() -> None:
    from api.app import create_app
    from webui.backend import Backend
    from webui.settings import WebUISettings

    for make, who in ((lambda s: create_app(s), "the API"), (lambda s: Backend(s, WebUISettings()), "the web UI")):
        with pytest.raises(MissingRedisUrl, match=f"^{who} needs a Redis URL: --redis-url or QUEUECHAT_REDIS_URL"):
            make(Settings(redis_url=None))


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "queuechat.requests"]


def test_one_log_line_per_request_names_model_job_request_id_wait_and_tokens(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queuechat.requests")
    caplog.set_level(logging.INFO, logger="workers.service")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, headers={"X-Request-Id": "client-1"})
    assert r.status_code == 200
    answer = r.json()
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/chat/completions", json={**body, "stream": True},
        headers={"X-Request-Id": "client-2"}, timeout=60,
    ) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
    httpx.get(f"{stack.base_url}/v1/models/nope", headers={"X-Request-Id": "client-3"})
    # each line is written once its response has been sent, just after the client has it all
    lines = wait_for(lambda: len(_lines(caplog)) >= 3 and _lines(caplog))
    whole = [line for line in lines if "request_id=client-1 " in line]
    assert len(whole) == 1, lines
    job = "job-" + answer["id"].removeprefix("chatcmpl-")
    usage = answer["usage"]
    assert whole[0].startswith(f"POST /v1/chat/completions 200 model=tiny job={job} request_id=client-1 queue_wait=")
    assert (
        f"prompt_tokens={usage['prompt_tokens']} completion_tokens={usage['completion_tokens']} duration=" in whole[0]
    )
    (stream_line,) = [line for line in lines if "request_id=client-2 " in line]
    assert stream_line.startswith("POST /v1/chat/completions 200 model=tiny job=job-")
    assert " completion_tokens=5 " in stream_line  # written once the stream had ended
    (missing,) = [line for line in lines if "request_id=client-3 " in line]
    assert missing.startswith("GET /v1/models/nope 404 model=- job=- request_id=client-3 queue_wait=- ")
    # the worker's line of the same job names the client's id too, so the two logs can be matched
    worker_lines = [r.getMessage() for r in caplog.records if r.name == "workers.service"]
    assert [line for line in worker_lines if line.startswith(f"job {job} request_id=client-1 model=tiny completed ")]


def test_the_clients_request_id_travels_in_the_job(start_api: Callable[..., ApiServer], settings: Settings) -> None:
    """A worker's log line can name the client's request: the id is a field of the job on the stream."""
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    # a live worker that never reads: the job stays on the stream to be looked at
    WorkerRegistration(client, keys, WorkerCard(id="mute", models=["held"]), ttl=60).heartbeat(WorkerStatus())
    api: ApiServer = start_api()
    body = {"model": "held", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def send() -> None:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{api.base_url}/v1/chat/completions", json=body, headers={"X-Request-Id": "abc-123"}, timeout=2)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(10)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.jobs("held")))
    jobs = [json.loads(fields[b"job"]) for _, fields in entries]
    assert [j["request_id"] for j in jobs] == ["abc-123"]


async def test_a_batch_run_opens_its_async_client_like_its_rq_jobs_connection(settings: Settings) -> None:
    """The batch runner talks to the Redis of the rq job that it is, never to a guessed default."""
    from unittest import mock

    from broker.connection import async_client_like

    assert settings.redis_url
    sync = sync_client(settings.redis_url)
    sync.set(f"{settings.key_prefix}:probe", "here")
    client = async_client_like(sync)
    try:
        assert await client.get(f"{settings.key_prefix}:probe") == b"here"
    finally:
        await client.aclose()
    odd = mock.Mock()
    odd.connection_pool.connection_class = object
    odd.connection_pool.connection_kwargs = {}
    with pytest.raises(ValueError, match="cannot open an async client like one"):
        async_client_like(odd)
