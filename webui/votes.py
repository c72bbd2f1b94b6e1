"""Votes and flags, appended as JSON lines to one file per day (UTC), as FastChat logs its conversations.

Each line holds the vote type, the model(s), the conversation(s) with every turn's parameters and timestamps,
and the client's address. The files are meant for people curating feedback, so they are plain and append-only.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webui.chat import ChatSession

CHAT_VOTES = ("upvote", "downvote", "flag")
# FastChat's names for the side-by-side votes
COMPARE_VOTES = ("leftvote", "rightvote", "tievote", "bothbad_vote")


class VoteLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # Gradio runs plain functions in a thread pool

    def path_for(self, tstamp: float) -> Path:
        return self.directory / f"{datetime.fromtimestamp(tstamp, UTC):%Y-%m-%d}-conv.json"

    def append(self, record: dict[str, Any]) -> Path:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        path = self.path_for(record["tstamp"])
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(line)
        return path

    def chat_vote(self, kind: str, session: ChatSession, ip: str | None) -> Path:
        if kind not in CHAT_VOTES:
            raise ValueError(f"unknown vote {kind!r}")
        last = session.turns[-1]
        return self.append(
            {"tstamp": time.time(), "type": kind, "model": last.model, "state": session.record(), "ip": ip}
        )

    def compare_vote(self, kind: str, left: ChatSession, right: ChatSession, ip: str | None) -> Path:
        if kind not in COMPARE_VOTES:
            raise ValueError(f"unknown vote {kind!r}")
        return self.append(
            {
                "tstamp": time.time(),
                "type": kind,
                "models": [left.turns[-1].model, right.turns[-1].model],
                "states": [left.record(), right.record()],
                "ip": ip,
            }
        )
