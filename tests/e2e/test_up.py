"""``queuechat up`` as a user runs it: a real process tree (embedded Valkey, worker, API, batch worker) on free
ports with the tiny model, in a session of its own so that a terminal's Ctrl-C can be sent to its process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


class Up:
    def __init__(self, model_dir: Path, tmp: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.runtime = tmp / "runtime"
        self.runtime.mkdir()
        self.log = tmp / "up.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECHAT_")}
        self.env = {
            **base,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "XDG_RUNTIME_DIR": str(self.runtime),  # where `up` says where its Redis is: this test's own
            "QUEUECHAT_FILES_DIR": str(tmp / "files"),
            "QUEUECHAT_HEARTBEAT_INTERVAL": "0.5",
            "QUEUECHAT_HEARTBEAT_TTL": "2",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "queuechat", "up",
                    "--model-path", str(model_dir), "--model-names", "tiny",
                    "--port", str(self.port), "--device", "cpu", "--num-threads", "1", "--no-webui",
                ],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group, as a shell's job is
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self, timeout: float = 180) -> None:
        wait_for(lambda: "OpenAI API on" in self.output() or self.process.poll() is not None, timeout=timeout)
        assert self.process.poll() is None, self.output()

    def queuechat(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "queuechat", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def up(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Up]:
    running = Up(tiny_model_dir, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_other_commands_find_the_running_up(up: Up) -> None:
    up.wait_serving()
    record = up.runtime / "queuechat" / "up.json"
    assert record.exists()  # first: without it info would try 127.0.0.1:6379, which may be anyone's
    # no --redis-url, no QUEUECHAT_REDIS_URL: info reads the Redis of the running `up`, not 127.0.0.1:6379
    run = up.queuechat("info", "--json")
    assert run.returncode == 0, run.stderr
    assert [w["models"] for w in json.loads(run.stdout)["workers"]] == [["tiny"]]
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=90) == 0, up.output()
    assert not record.exists()  # removed on exit: nothing points at a Valkey that is gone


def test_a_second_worker_joins_the_running_up(up: Up, tiny_model_dir: Path) -> None:
    """A second ``queuechat worker`` started with no --redis-url and no QUEUECHAT_REDIS_URL serves through the
    running `up` (its Redis, read from the runtime file), not a Redis on 127.0.0.1:6379."""
    up.wait_serving()
    with (up.log.parent / "second-worker.log").open("ab") as out:
        second = subprocess.Popen(
            [
                sys.executable, "-m", "queuechat", "worker",
                "--model-path", str(tiny_model_dir), "--model-names", "tiny-second",
                "--device", "cpu", "--num-threads", "1",
            ],
            env=up.env, cwd=REPO, stdout=out, stderr=out,
        )  # fmt: skip
    try:

        def served() -> list[str]:
            assert second.poll() is None, (up.log.parent / "second-worker.log").read_text(errors="replace")
            return [m["id"] for m in httpx.get(f"{up.base_url}/v1/models", timeout=10).json()["data"]]

        wait_for(lambda: "tiny-second" in served(), timeout=180)
        body = {"model": "tiny-second", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        reply = httpx.post(f"{up.base_url}/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)


def test_the_api_line_is_printed_once_the_api_answers(up: Up) -> None:
    up.wait_serving()
    # at once, no retry: the line said the API serves
    response = httpx.get(f"{up.base_url}/v1/models", timeout=10)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["tiny"]


def test_ctrl_c_lets_running_streams_end_and_workers_deregister(up: Up) -> None:
    """A terminal's Ctrl-C is a SIGINT to the whole foreground process group. The stream running then ends as it
    would have (Valkey is stopped last, the API is not signalled twice), and the worker deregisters."""
    up.wait_serving()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Count."}], "max_tokens": 300, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{up.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
                break
        os.killpg(up.process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        events += [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c], [c for c in chunks if "error" in c]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert up.process.wait(timeout=120) == 0, up.output()
    output = up.output()
    assert "broker_unavailable" not in output and "could not deregister" not in output, output
