"""The web UI's tabs without a browser: the typed view each handler draws, and the one set of handlers that both
tabs (Chat: one conversation, Compare: two) are made of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from broker.settings import Settings
from webui.backend import Backend
from webui.chat import ChatSession, Params
from webui.settings import WebUISettings
from webui.tabs import Tab, TabView


def answered(text: str = "hi") -> ChatSession:
    s = ChatSession()
    turn = s.ask(text, "m", Params())
    turn.answer, turn.finished = "hello", 1.0
    return s


def interactive(update: Any) -> bool:
    assert isinstance(update, gr.Button)
    return bool(update.interactive)


def test_votes_open_only_when_every_answer_is_over_and_close_once_cast() -> None:
    a, b = answered(), answered()
    idle = TabView((a, b), votes=4).updates()
    assert len(idle) == 2 + 5 + 4  # two chat windows, input, notice, send, stop, regenerate, four votes
    assert [interactive(u) for u in idle[4:]] == [True, False, True, True, True, True, True]
    b.ask("again", "m", Params())  # B's next answer has not come yet
    waiting = TabView((a, b), votes=4).updates()
    assert [interactive(u) for u in waiting[7:]] == [False] * 4
    streaming = TabView((a,), votes=3, streaming=True).updates()
    assert [interactive(u) for u in streaming[3:]] == [False, True, False, False, False, False]
    voted = TabView((answered(),), votes=3, voted=True, notice="thanks").updates()
    assert voted[2] == "thanks"
    assert [interactive(u) for u in voted[6:]] == [False] * 3


def _tab(settings: Settings, tmp_path: Path, size: int) -> Tab:
    backend = Backend(settings, WebUISettings(log_dir=tmp_path))
    votes = ("upvote",) if size == 1 else ("leftvote",)
    return Tab(backend, size, votes, lambda *_: None, pick_models=f"pick {size}", thanks=lambda kind: kind)


async def test_one_send_handler_serves_one_or_two_conversations(settings: Settings, tmp_path: Path) -> None:
    params = ("", 0.0, 1.0, 16)
    for size in (1, 2):
        tab = _tab(settings, tmp_path, size)
        sessions = [ChatSession() for _ in range(size)]
        # a model missing for one conversation: nothing is asked, the tab says what to do
        views = [v async for v in tab.send(*sessions, "hello", *(["m"] * (size - 1) + [None]), *params)]
        assert [v[size + 1] for v in views] == [f"pick {size}"]
        assert all(not s.turns for s in sessions)
        # an empty message is not sent
        views = [v async for v in tab.send(*sessions, "  ", *(["m"] * size), *params)]
        assert len(views) == 1 and all(not s.turns for s in sessions)
        await tab.backend.close()


async def test_a_vote_needs_every_answer_and_is_recorded_once(settings: Settings, tmp_path: Path) -> None:
    recorded: list[tuple[str, int]] = []
    backend = Backend(settings, WebUISettings(log_dir=tmp_path))
    tab = Tab(backend, 2, ("tievote",), lambda kind, ss, _ip: recorded.append((kind, len(ss))), "pick", lambda k: k)
    vote = tab.voter("tievote")
    a, b = answered(), ChatSession()
    assert vote(None, a, b)[3] == "Nothing to vote on yet."
    assert recorded == []
    b = answered()
    updates = vote(None, a, b)
    assert updates[3] == "tievote" and recorded == [("tievote", 2)]
    assert not interactive(updates[-1])
