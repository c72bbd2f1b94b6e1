"""The web UI in a real browser: Debian's chromium, headless, driven by Playwright, against the API app with the
UI mounted at /ui (as ``queuechat up`` serves it), a real Redis and the tiny model worker.

Every request that leaves the loopback is blocked and recorded, so the page is proven to work offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import RunningWorker, free_port, wait_for
from tests.integration.test_reasoning import think_template

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium chromium-driver)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
expect = sync_api.expect
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# A streamed answer and the first page load can take a while on a busy two-core machine.
WAIT_MS = 60_000


@dataclass
class Served:
    base_url: str
    log_dir: Path
    worker: RunningWorker
    blocked: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _serving(settings: Settings, worker: RunningWorker, log_dir: Path) -> Iterator[Served]:
    """The API with the web UI on a free loopback port, once ``worker`` is registered."""
    from queuechat.compose import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, webui=True), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30)
    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    wait_for(lambda: sync_client(settings.redis_url).hlen(keys.workers), timeout=30)
    try:
        yield Served(f"http://127.0.0.1:{port}", log_dir, worker)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def served(
    settings: Settings,
    start_worker: Callable[..., RunningWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    """The tiny worker serving ``tiny`` and ``tiny-b``, and the API with the web UI on a free loopback port."""
    log_dir = tmp_path / "votes"
    monkeypatch.setenv("QUEUECHAT_WEBUI_LOG_DIR", str(log_dir))
    with _serving(settings, start_worker("tiny,tiny-b"), log_dir) as served:
        yield served


@contextlib.contextmanager
def _browser(served: Served, tmp_path: Path) -> Iterator[Any]:
    """A page of headless chromium that reaches nothing beyond the loopback."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})

        def offline(route: Any) -> None:
            if route.request.url.startswith(served.base_url):
                route.continue_()
            else:
                served.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", offline)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        try:
            yield page
        finally:
            page.screenshot(path=str(tmp_path / "webui.png"), full_page=True)
            browser.close()


@pytest.fixture
def page(served: Served, tmp_path: Path) -> Iterator[Any]:
    with _browser(served, tmp_path) as page:
        yield page


def open_ui(page: Any, served: Served, query: str = "") -> None:
    page.goto(f"{served.base_url}/ui/{query}")
    expect(page.locator("#status-strip")).to_contain_text("tiny: 1 worker")


def set_max_tokens(page: Any, n: int) -> None:
    accordion = page.locator("#parameters")
    if not page.locator("#max-output-tokens").is_visible():
        accordion.locator(".label-wrap").click()
    box = page.locator("#max-output-tokens input[data-testid='number-input']")
    # On a busy machine the slider can still be mounting as the accordion opens, and set its initial value over
    # what was typed: type again until the value holds, as a person would.
    for _ in range(10):
        box.fill(str(n))
        box.press("Enter")
        try:
            expect(box).to_have_value(str(n), timeout=3_000)
            break
        except AssertionError:
            continue
    expect(box).to_have_value(str(n))


def test_chat_streams_stops_and_logs_votes(page: Any, served: Served, settings: Settings, tmp_path: Path) -> None:
    worker = served.worker.worker
    open_ui(page, served, "?model=tiny-b")
    expect(page.locator("#chat-model input")).to_have_value("tiny-b")  # ?model= preselects
    page.locator("#chat-model input").click()
    page.get_by_role("option", name="tiny", exact=True).click()
    expect(page.locator("#chat-model input")).to_have_value("tiny")

    # a long answer, stopped while it streams: the worker must stop generating it
    set_max_tokens(page, 4000)
    page.locator("#chat-input textarea").fill("Tell me a long story")
    page.locator("#chat-send").click()
    bot = page.locator("#chatbot [data-testid='bot']")
    expect(bot.last).not_to_be_empty()
    page.locator("#chat-stop").click()
    expect(bot.last).to_contain_text("(stopped)")
    page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
    wait_for(lambda: worker.totals["cancelled"] == 1 and not worker.jobs, timeout=30)
    assert settings.redis_url
    stats = sync_client(settings.redis_url).hgetall(Keys(settings.key_prefix).stats("tiny"))
    assert int(stats[b"cancelled"]) == 1 and b"completed" not in stats
    assert int(stats[b"output_tokens"]) < 4000

    # a new conversation with a short answer, then a vote
    page.locator("#chat-clear").click()
    expect(bot).to_have_count(0)
    set_max_tokens(page, 32)
    page.locator("#chat-input textarea").fill("Hello there")
    page.locator("#chat-input textarea").press("Enter")
    expect(page.locator("#chatbot [data-testid='user']")).to_have_count(1)
    expect(page.locator("#chat-upvote")).to_be_enabled()  # the answer is complete
    wait_for(lambda: worker.totals["completed"] == 1, timeout=30)
    answer = bot.last.inner_text()
    assert answer.strip()
    page.locator("#chat-upvote").click()
    expect(page.locator("#chat-notice")).to_contain_text("your upvote was recorded")
    expect(page.locator("#chat-upvote")).to_be_disabled()  # one vote per answer
    page.screenshot(path=str(tmp_path / "voted.png"), full_page=True)

    (log,) = served.log_dir.glob("*-conv.json")
    (line,) = log.read_text().splitlines()
    vote = json.loads(line)
    assert (vote["type"], vote["model"], vote["ip"]) == ("upvote", "tiny", "127.0.0.1")
    (turn,) = vote["state"]["turns"]
    assert turn["user"] == "Hello there" and turn["answer"].strip()
    assert turn["params"]["max_tokens"] == 32 and turn["finish_reason"] == "length"
    assert turn["started"] <= turn["finished"] <= vote["tstamp"]

    # Regenerate asks again: still one question and one answer on the page, a new job at the worker
    page.locator("#chat-regenerate").click()
    wait_for(lambda: worker.totals["completed"] == 2, timeout=30)
    expect(page.locator("#chat-upvote")).to_be_enabled()  # a new answer can be voted on
    expect(page.locator("#chatbot [data-testid='user']")).to_have_count(1)
    expect(bot).to_have_count(1)

    # Clear while an answer streams: once the reply has wound down the page is empty and ready, not redrawn by a
    # late frame. (That Clear cancels the job is test_webui_chat's; here a busy browser may click only after the end.)
    set_max_tokens(page, 3968)  # as long as the context allows after the first turn
    page.locator("#chat-input textarea").fill("Another long story")
    page.locator("#chat-send").click()
    expect(bot).to_have_count(2)
    expect(bot.last).not_to_be_empty()
    page.locator("#chat-clear").click()
    wait_for(lambda: not worker.jobs, timeout=60)
    expect(page.locator("#chat-send")).to_be_enabled()
    expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    expect(bot).to_have_count(0)
    assert served.blocked == [], f"the page reached beyond the loopback: {served.blocked}"
    assert (tmp_path / "stopped.png").stat().st_size and (tmp_path / "voted.png").stat().st_size


def test_compare_streams_two_models_and_logs_the_vote(page: Any, served: Served) -> None:
    open_ui(page, served)
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-model-a input")).to_have_value("tiny")
    expect(page.locator("#compare-model-b input")).to_have_value("tiny-b")
    set_max_tokens(page, 24)
    page.locator("#compare-input textarea").fill("Which is the capital of France?")
    page.locator("#compare-send").click()
    expect(page.locator("#compare-tievote")).to_be_enabled()
    for side in ("#chatbot-a", "#chatbot-b"):
        expect(page.locator(f"{side} [data-testid='bot']")).not_to_be_empty()
    page.locator("#compare-tievote").click()
    expect(page.locator("#compare-notice")).to_contain_text("your vote was recorded")
    (log,) = served.log_dir.glob("*-conv.json")
    (line,) = log.read_text().splitlines()
    vote = json.loads(line)
    assert (vote["type"], vote["models"]) == ("tievote", ["tiny", "tiny-b"])
    assert all(state["turns"][0]["answer"] for state in vote["states"])
    assert served.worker.worker.totals["completed"] == 2
    assert served.blocked == []
    # keep the timestamps honest: the log is written when the vote is cast, after both answers
    assert vote["tstamp"] <= time.time()


def test_sigterm_with_an_open_page_stops_the_api(settings: Settings, tmp_path: Path) -> None:
    """An open page keeps a heartbeat stream; mounted in the API, it must not hold a SIGTERM up until uvicorn's
    graceful-shutdown timeout (the drain timeout, set far beyond the wait below) runs out."""
    assert settings.redis_url
    port = free_port()
    env = {**os.environ, "QUEUECHAT_KEY_PREFIX": settings.key_prefix, "QUEUECHAT_DRAIN_TIMEOUT": "300"}
    log = (tmp_path / "api.log").open("w+")
    api = subprocess.Popen(
        [sys.executable, "-m", "api", "--port", str(port), "--redis-url", settings.redis_url, "--webui"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200, timeout=120, interval=0.2)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/ui/")
            expect(page.locator("#status-strip")).to_contain_text("No worker is serving any model", timeout=WAIT_MS)
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.seek(0)
                raise AssertionError(f"the API did not stop within 60 s:\n{log.read()}") from None
            browser.close()
        log.seek(0)
        output = log.read()
        assert api.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once it has stopped
        assert "Application shutdown complete" in output and "graceful shutdown exceeded" not in output
    finally:
        if api.poll() is None:
            api.kill()
        log.close()


@pytest.fixture
def thinking(
    settings: Settings,
    start_worker: Callable[..., RunningWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Served, Any]]:
    """``tiny`` served by a worker with a reasoning parser whose chat template opens ``<think>`` (so all the random
    model writes is reasoning), ``tiny-b`` by a worker without one; the web UI, and a page of it."""
    log_dir = tmp_path / "votes"
    monkeypatch.setenv("QUEUECHAT_WEBUI_LOG_DIR", str(log_dir))
    reasoner = start_worker("tiny", conv_template=think_template(tmp_path), reasoning_parser="deepseek_r1")
    start_worker("tiny-b")
    with _serving(settings, reasoner, log_dir) as served, _browser(served, tmp_path) as page:
        yield served, page


def test_a_reasoning_models_thinking_is_a_collapsed_thought_apart_from_the_answer(
    thinking: tuple[Served, Any], tmp_path: Path
) -> None:
    served, page = thinking
    open_ui(page, served)
    expect(page.locator("#status-strip")).to_contain_text("tiny-b: 1 worker")
    expect(page.locator("#chat-model input")).to_have_value("tiny")
    set_max_tokens(page, 16)
    page.locator("#chat-input textarea").fill("Hello there")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-upvote")).to_be_enabled()  # the answer is over

    thought = page.locator("#chatbot .thought-group")
    expect(thought).to_have_count(1)
    expect(thought).to_contain_text("Thinking")
    bot = page.locator("#chatbot [data-testid='bot']")
    expect(bot.last).to_contain_text("cut short while the model was thinking")
    page.locator("#chat-upvote").click()
    expect(page.locator("#chat-notice")).to_contain_text("your upvote was recorded")
    (log,) = served.log_dir.glob("*-conv.json")
    (turn,) = json.loads(log.read_text())["state"]["turns"]
    assert turn["reasoning"].strip() and turn["answer"] == ""  # all of it was thinking, none of it an answer
    # closed once over: the reasoning is not on the page until the thought is opened, and then not in the answer
    assert " ".join(thought.inner_text().split()) == "Thinking"
    thought.locator("[role='button']").first.click()
    expect(thought).not_to_have_text("Thinking")
    body = " ".join(thought.inner_text().split()).removeprefix("Thinking").strip()
    assert body and body not in " ".join(bot.last.inner_text().split()), body
    page.screenshot(path=str(tmp_path / "thought-open.png"), full_page=True)

    # Compare: the reasoning model's side has its thought; the other model's text is left as it is
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-model-a input")).to_have_value("tiny")
    expect(page.locator("#compare-model-b input")).to_have_value("tiny-b")
    page.locator("#compare-input textarea").fill("Which is the capital of France?")
    page.locator("#compare-send").click()
    expect(page.locator("#compare-tievote")).to_be_enabled()
    expect(page.locator("#chatbot-a .thought-group")).to_have_count(1)
    expect(page.locator("#chatbot-a .thought-group")).to_contain_text("Thinking")
    expect(page.locator("#chatbot-b .thought-group")).to_have_count(0)
    expect(page.locator("#chatbot-b [data-testid='bot']").last).not_to_be_empty()
    assert served.blocked == []
