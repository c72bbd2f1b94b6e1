"""What the web UI reads from the registry through a real Redis: the status strip's counts of workers and jobs,
the model list in its ``once`` and ``reload`` modes, and both with no more rights than the ``front`` ACL role's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.connection import async_client
from broker.producer import Producer
from broker.schemas import Job, JobKind
from broker.settings import Settings
from tests import webui_support
from tests.conftest import RunningWorker
from tests.integration.test_acl import role_urls  # noqa: F401  # the fixture: a Redis user per role
from tests.webui_support import answer, idle_model, started
from webui.chat import ChatSession, Params
from webui.status import ModelLoad, model_loads, status_line, status_markdown

# The shared fixture, bound here so pytest finds it in this module (an import of it would trip ruff's F811 at
# every test that takes it).
producer = webui_support.producer


async def test_status_counts_workers_running_and_waiting_jobs(
    settings: Settings, producer: Producer, start_worker: Callable[..., RunningWorker]
) -> None:
    await started(start_worker, producer)
    idle_model(settings, "busy", live=True)
    for priority in (0, 0, 0, 2):  # priority 2: a stream of its own (fair queuing), counted with the model's
        job = Job(kind=JobKind.CHAT, model="busy", messages=[], deadline=time.time() + 30, priority=priority)
        await producer.submit(job)
    loads = {m.model: m for m in await model_loads(producer)}
    assert (loads["busy"].workers, loads["busy"].running, loads["busy"].waiting) == (1, 0, 4)
    assert (loads["tiny"].workers, loads["tiny"].waiting) == (1, 0)
    assert "**busy**: 1 worker, 0 running, 4 waiting" in status_markdown(list(loads.values()))
    assert status_markdown([]).startswith("No worker is serving any model right now")


@pytest.mark.parametrize("mode", ["once", "reload"])
async def test_model_list_modes(settings: Settings, mode: str, tmp_path: Path) -> None:
    """``once`` keeps the models seen at the first page load (the ↻ button still reads them afresh);
    ``reload`` reads the registry at every load."""
    from webui.backend import Backend
    from webui.settings import WebUISettings

    backend = Backend(settings, WebUISettings(model_list_mode=mode, log_dir=tmp_path))
    try:
        idle_model(settings, "first", live=True)
        assert await backend.models(fresh=False) == ["first"]
        idle_model(settings, "second", live=True)
        expected = ["first"] if mode == "once" else ["first", "second"]
        assert await backend.models(fresh=False) == expected
        assert await backend.models(fresh=True) == ["first", "second"]
    finally:
        await backend.close()


async def test_the_front_acl_role_is_enough_for_the_web_ui(
    settings: Settings,
    role_urls: dict[str, str],  # noqa: F811  # the fixture imported from test_acl
    start_worker: Callable[..., RunningWorker],
) -> None:
    """The web UI is a front server: with the ``front`` Redis user it answers and shows the status strip."""
    start_worker(settings_=settings.model_copy(update={"redis_url": role_urls["worker"]}))
    front = settings.model_copy(update={"redis_url": role_urls["front"]})
    producer = Producer(async_client(role_urls["front"]), front)
    try:
        deadline = time.monotonic() + 30
        while "tiny" not in await producer.live_models():
            assert time.monotonic() < deadline, "the worker did not register"
            await asyncio.sleep(0.05)
        session = ChatSession()
        session.ask("Hello", "tiny", Params(max_tokens=8))
        await answer(session, producer)
        assert session.turns[0].answer and session.turns[0].error is None
        # the worker acknowledges a job just after its last event, so the answer can be a moment ahead
        deadline = time.monotonic() + 10
        while (await model_loads(producer))[0] != ModelLoad("tiny", 1, 0, 0):
            assert time.monotonic() < deadline, await model_loads(producer)
            await asyncio.sleep(0.05)
        assert (await status_line(producer)).startswith("**tiny**: 1 worker")
    finally:
        await producer.close()
