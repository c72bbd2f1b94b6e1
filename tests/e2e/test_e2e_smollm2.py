"""The README's promise, end to end: ``queuechat up`` on its embedded defaults (Valkey from the wheel, SmolLM2)
answers the official openai client, streaming and not, and stops cleanly; on each engine (``--engine``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.conftest import free_port, wait_for
from tests.engines import ENGINE_PARAMS

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def up(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("up") / "up.log", "w+")  # noqa: SIM115  # a file, not a pipe nobody drains
    env = {k: v for k, v in os.environ.items() if k != "QUEUECHAT_REDIS_URL"}  # embedded Valkey, as a new user
    env["QUEUECHAT_FILES_DIR"] = str(tmp_path_factory.mktemp("files"))  # batch files, not in the user's cache
    process = subprocess.Popen(
        [sys.executable, "-m", "queuechat", "up", "--port", str(port), "--num-threads", "2", "--engine", request.param],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    process.log = log  # type: ignore[attr-defined]
    try:

        def ready() -> bool:
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"queuechat up exited with {process.returncode}:\n{log.read()[-3000:]}")
            return bool(httpx.get(f"{base}/v1/models", timeout=2).json()["data"])

        wait_for(ready, timeout=600, interval=0.5)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_lists_the_default_model(up: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = up
    client = OpenAI(base_url=f"{base}/v1", api_key="none")
    assert [m.id for m in client.models.list()] == ["smollm2"]


def test_streaming_answer_mentions_paris(up: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = up
    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
    pieces = []
    for chunk in client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=40, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) > 2  # tokens arrived as they were generated, not in one piece
    assert "Paris" in "".join(pieces)


def test_non_streaming_answer_mentions_paris(up: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = up
    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"  # SmolLM2 ends its answer with its EOS token
    assert r.usage is not None and r.usage.completion_tokens > 0


def test_stream_and_non_stream_agree_at_temperature_0(up: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = up
    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=0, max_tokens=40, stream=True
        )
        if chunk.choices
    )
    assert streamed == plain.choices[0].message.content


def test_json_mode_answers_valid_json(up: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = up
    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give the capital of France as JSON with the key 'capital'."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_a_batch_runs_out_of_the_box(up: tuple[str, subprocess.Popen[str]]) -> None:
    from tests.batch_support import results, upload, wait_batch

    base, _ = up
    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "smollm2", "messages": QUESTION, "temperature": 0, "max_tokens": 40}}
             for i in range(2)]  # fmt: skip
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_batch(client, batch.id, timeout=300)
    assert batch.status == "completed"
    output = results(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in output) == ["q0", "q1"]
    assert all("Paris" in r["response"]["body"]["choices"][0]["message"]["content"] for r in output)


def test_the_web_ui_shares_the_api_port(up: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = up
    page = httpx.get(f"{base}/ui/", timeout=10)
    assert page.status_code == 200 and "gradio" in page.text.lower()
    assert httpx.get(f"{base}/ui/config", timeout=10).json()["title"] == "queuechat"


def test_sigterm_stops_everything(up: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = up
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    process.log.seek(0)  # type: ignore[attr-defined]
    output = process.log.read()  # type: ignore[attr-defined]
    assert process.returncode == 0, output
    match = re.search(r"embedded Valkey on redis://127\.0\.0\.1:(\d+)", output)
    assert match, output
    time.sleep(0.2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{match.group(1)}", timeout=1)
