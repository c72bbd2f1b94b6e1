"""What the Chat and Compare tabs share: a typed view of a tab, and one set of handlers for a tab of any number of
conversations (Chat has one, Compare two), built once per tab by :func:`webui.app.build_blocks`.

Every reply is an async generator running in the server's event loop, and the only thing that draws the
conversations while it runs: Stop and Clear just mark the sessions, the reply notices at its next event, closes
the job's events (the worker cancels the job when its next PUBLISH reaches nobody) and draws the final state last.
Gradio's own ``cancels`` is not used for them: its browser code sends the cancellation only after the handler
that triggered it has finished, so a frame of the cancelled reply could land after, and stay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.backend import Backend
from webui.chat import ChatSession, InputRejected, Params, Shown, reply, side_by_side

# How long Clear waits for a running reply to notice it and wind down (it looks every STOP_POLL_SECONDS).
STOP_WAIT_SECONDS = 10.0

Sessions = tuple[ChatSession, ...]
# What a tab's handlers return: one update per output widget, in the order of :meth:`TabWidgets.outputs`.
Updates = tuple[Any, ...]


# The title of a reasoning model's thought: Gradio shows a message with a title as a collapsible block of its own
# (open with a spinner while "pending", closed once "done"), apart from the answer.
THINKING_TITLE = "Thinking"


def chatbot_value(session: ChatSession) -> list[dict[str, Any]]:
    # Gradio's normalised message form: a plain string goes through inspect.cleandoc, which strips indentation
    # that every line after the first shares (code would lose it).
    return [_message(shown) for shown in session.display()]


def _message(shown: Shown) -> dict[str, Any]:
    message: dict[str, Any] = {"role": shown.role, "content": [{"type": "text", "text": shown.text}]}
    if shown.thinking is not None:
        message["metadata"] = {"title": THINKING_TITLE, "status": shown.thinking}
    return message


def client_ip(request: gr.Request | None) -> str | None:
    # Behind a trusted reverse proxy uvicorn already puts the forwarded address here.
    return request.client.host if request is not None and request.client else None


@dataclass
class TabWidgets:
    """The widgets a tab's handlers draw, one chat window per conversation."""

    chatbots: list[gr.Chatbot]
    textbox: gr.Textbox
    notice: gr.Markdown
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    votes: list[gr.Button]
    clear: gr.Button  # an input only: drawn by the handlers, never redrawn

    def outputs(self) -> list[Any]:
        return [*self.chatbots, self.textbox, self.notice, self.send, self.stop, self.regenerate, *self.votes]


@dataclass(frozen=True)
class TabView:
    """What a tab shows: its conversations, the input box (None: left as it is), a notice, and which buttons can
    be pressed. Votes are open once every conversation's last answer is over, until one is cast."""

    sessions: Sessions
    votes: int
    text: str | None = None
    notice: str = ""
    streaming: bool = False
    voted: bool = False

    def updates(self) -> Updates:
        votable = not (self.streaming or self.voted) and all(s.last_answered is not None for s in self.sessions)
        return (
            *(chatbot_value(s) for s in self.sessions),
            gr.skip() if self.text is None else self.text,
            self.notice,
            gr.Button(interactive=not self.streaming),
            gr.Button(interactive=self.streaming),
            gr.Button(interactive=not self.streaming and bool(self.sessions[0].turns)),
            *(gr.Button(interactive=votable) for _ in range(self.votes)),
        )


@dataclass
class Tab:
    """The handlers of one tab. Their inputs are the tab's sessions first, then (send) the input box, then one
    model per session, then the shared parameters (system prompt, temperature, top-p, max tokens)."""

    backend: Backend
    size: int  # conversations in the tab
    votes: Sequence[str]  # the vote kinds of its vote buttons, in order
    record_vote: Callable[[str, Sessions, str | None], object]
    pick_models: str  # the notice when a model is missing
    thanks: Callable[[str], str]  # the notice once a vote is recorded

    def view(self, sessions: Sessions, **state: Any) -> Updates:
        return TabView(sessions, len(self.votes), **state).updates()

    def params_of(self, temp: float | None, top: float | None, max_out: float | None) -> Params:
        # Widgets inside a closed accordion have not rendered yet and send None (Gradio 6)
        ui = self.backend.ui
        return Params(
            temperature=ui.temperature if temp is None else float(temp),
            top_p=ui.top_p if top is None else float(top),
            max_tokens=ui.max_output_tokens if max_out is None else int(max_out),
        )

    async def _busy(self, sessions: Sessions) -> bool:
        """Whether a reply is still running (given a moment to wind down: sent right after Stop)."""
        return not all([await s.settled() for s in sessions])

    async def _stream(self, sessions: Sessions) -> AsyncIterator[Updates]:
        producer, timeout = self.backend.producer, self.backend.settings.request_timeout
        replies = [reply(s, producer, timeout) for s in sessions]
        source: AsyncIterator[object] = replies[0] if len(replies) == 1 else side_by_side(*replies)
        async for _ in source:
            yield self.view(sessions, streaming=True)
        yield self.view(sessions)

    def _split(self, values: Sequence[Any], with_text: bool) -> tuple[Sessions, str, list[str | None], Params, str]:
        n = self.size
        sessions = tuple(values[:n])
        text = values[n] if with_text else ""
        rest = values[n + 1 :] if with_text else values[n:]
        models, (sys_prompt, temp, top, max_out) = list(rest[:n]), rest[n:]
        return sessions, text, models, self.params_of(temp, top, max_out), sys_prompt or ""

    async def send(self, *values: Any) -> AsyncIterator[Updates]:
        sessions, text, models, params, sys_prompt = self._split(values, with_text=True)
        if await self._busy(sessions) or not text.strip():
            yield self.view(sessions, streaming=any(s.streaming for s in sessions))
            return
        if not all(models):
            yield self.view(sessions, notice=self.pick_models)
            return
        ui = self.backend.ui
        try:
            for s in sessions:
                s.check(text, max_chars=ui.max_input_chars, max_turns=ui.max_turns)
        except InputRejected as exc:
            yield self.view(sessions, notice=str(exc))
            return
        for s, model in zip(sessions, models, strict=True):
            s.system_prompt = sys_prompt
            s.ask(text, str(model), params)
        yield self.view(sessions, text="", streaming=True)
        async for updates in self._stream(sessions):
            yield updates

    async def regenerate(self, *values: Any) -> AsyncIterator[Updates]:
        sessions, _, models, params, sys_prompt = self._split(values, with_text=False)
        if await self._busy(sessions) or not all(models) or not all(s.turns for s in sessions):
            yield self.view(sessions, streaming=any(s.streaming for s in sessions))
            return
        for s, model in zip(sessions, models, strict=True):
            s.system_prompt = sys_prompt
            s.retry(str(model), params)
        yield self.view(sessions, streaming=True)
        async for updates in self._stream(sessions):
            yield updates

    async def stop(self, *sessions: ChatSession) -> None:
        for s in sessions:
            s.stop()

    async def clear(self, *sessions: ChatSession) -> Updates:
        for s in sessions:
            s.clear()
        # Drawn once a running reply has wound down, so this and the reply's last frame, in whichever order they
        # arrive, both show the empty conversation ready for input.
        for s in sessions:
            await s.settled(timeout=STOP_WAIT_SECONDS)
        return self.view(sessions, text="", streaming=any(s.streaming for s in sessions))

    def voter(self, kind: str) -> Callable[..., Updates]:
        def vote(request: gr.Request, *sessions: ChatSession) -> Updates:
            if any(s.last_answered is None for s in sessions):
                return self.view(sessions, notice="Nothing to vote on yet.")
            self.record_vote(kind, sessions, client_ip(request))
            return self.view(sessions, notice=self.thanks(kind), voted=True)  # one vote per answer, as in FastChat

        return vote

    def wire(self, widgets: TabWidgets, states: list[Any], models: list[Any], params: list[Any]) -> None:
        """Connect the tab's buttons, input box and chat windows to its handlers."""
        out = widgets.outputs()
        send_inputs = [*states, widgets.textbox, *models, *params]
        widgets.textbox.submit(self.send, send_inputs, out)
        widgets.send.click(self.send, send_inputs, out)
        widgets.regenerate.click(self.regenerate, [*states, *models, *params], out)
        widgets.stop.click(self.stop, states, None, concurrency_limit=None, show_progress="hidden")
        # a chat window's own trash icon must forget the conversation too, not just blank the window
        for trigger in (widgets.clear.click, *(c.clear for c in widgets.chatbots)):
            trigger(self.clear, states, out, concurrency_limit=None)
        for button, kind in zip(widgets.votes, self.votes, strict=True):
            button.click(self.voter(kind), states, out, concurrency_limit=None)
