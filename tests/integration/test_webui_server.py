"""The web UI as a FastChat-compatible server: the vote log's files, the auth file, the command's flags, and the
standalone server's login page."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from broker.settings import Settings
from tests.conftest import free_port, wait_for
from webui.chat import ChatSession, Params
from webui.main import parse_auth_file
from webui.votes import VoteLog


def test_votes_append_one_json_line_per_vote_to_a_file_per_day(tmp_path: Path) -> None:
    log = VoteLog(tmp_path / "votes")
    session = ChatSession(system_prompt="Be kind.")
    turn = session.ask("Hello", "tiny", Params(temperature=0.3, top_p=0.9, max_tokens=32))
    turn.answer, turn.finished = "Hi!", time.time()
    path = log.chat_vote("upvote", session, "10.0.0.7")
    other = ChatSession()
    other.ask("Hello", "tiny-b", Params()).answer = "Hey"
    assert log.compare_vote("tievote", session, other, None) == path
    assert path.name == f"{time.strftime('%Y-%m-%d', time.gmtime())}-conv.json"
    up, tie = (json.loads(line) for line in path.read_text().splitlines())
    assert (up["type"], up["model"], up["ip"]) == ("upvote", "tiny", "10.0.0.7")
    (logged,) = up["state"]["turns"]
    assert (logged["user"], logged["answer"], logged["params"]) == (
        "Hello",
        "Hi!",
        {"temperature": 0.3, "top_p": 0.9, "max_tokens": 32},
    )
    assert logged["started"] <= logged["finished"] <= up["tstamp"]
    assert up["state"]["system_prompt"] == "Be kind." and up["state"]["conversation_id"] == session.id
    assert (tie["type"], tie["models"]) == ("tievote", ["tiny", "tiny-b"])
    with pytest.raises(ValueError):
        log.chat_vote("leftvote", session, None)


def test_auth_file_in_fastchat_format(tmp_path: Path) -> None:
    creds = tmp_path / "auth"
    creds.write_text("alice:wonder, bob:builder\n")
    assert parse_auth_file(creds) == [("alice", "wonder"), ("bob", "builder")]


def test_webui_command_has_fastchat_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "queuechat", "webui", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for flag in ("--host", "--port", "--share", "--model-list-mode", "--gradio-auth-path", "--concurrency-count",
                 "--redis-url"):  # fmt: skip
        assert flag in out


def test_standalone_server_asks_for_the_login_of_the_auth_file(settings: Settings, tmp_path: Path) -> None:
    """``python -m webui`` on its own port; with ``--gradio-auth-path`` nothing but the login page is served
    until a listed user logs in."""
    assert settings.redis_url
    creds = tmp_path / "auth"
    creds.write_text("alice:wonder")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--redis-url", settings.redis_url, "--gradio-auth-path", str(creds)]
    log = (tmp_path / "webui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "webui", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: httpx.get(f"{base}/", timeout=2).status_code == 200, timeout=120, interval=0.2)
        assert httpx.get(f"{base}/config", timeout=5).status_code == 401
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.post("/login", data={"username": "alice", "password": "nope"}).status_code == 400
            assert client.post("/login", data={"username": "alice", "password": "wonder"}).status_code == 200
            config = client.get("/config").json()
        assert config["title"] == "queuechat" and not config["analytics_enabled"]
    finally:
        server.terminate()
        server.wait(20)
        log.close()
