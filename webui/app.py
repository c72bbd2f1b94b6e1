"""The Gradio Blocks: a Chat tab, a Compare tab, a status strip (mounted into the API by :mod:`webui.mount`).

Handlers are thin: they turn widget values into :mod:`webui.chat` calls and sessions back into widget values.
Every reply is an async generator running in the server's event loop, and the only thing that draws the
conversation while it runs: Stop and Clear just mark the session, the reply notices at its next event, closes the
job's events (the worker cancels the job when its next PUBLISH reaches nobody) and draws the final state last.
Gradio's own ``cancels`` is not used for them: its browser code sends the cancellation only after the handler
that triggered it has finished, so a frame of the cancelled reply could land after, and stay.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

# Before gradio is imported: no telemetry and no version check from any Blocks this process makes, so the UI
# works where only the loopback is reachable.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from webui.backend import Backend
from webui.chat import ChatSession, InputRejected, Params, reply, side_by_side
from webui.status import status_line

# How long Clear waits for a running reply to notice it and wind down (it looks every STOP_POLL_SECONDS).
STOP_WAIT_SECONDS = 10.0
# Links under the page: the API page would advertise handlers that are not an API anyone should script.
FOOTER_LINKS: list[Any] = ["gradio", "settings"]


def chatbot_value(session: ChatSession) -> list[dict[str, Any]]:
    # Gradio's normalised message form: a plain string goes through inspect.cleandoc, which strips indentation
    # that every line after the first shares (code would lose it).
    return [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in session.display()]


def client_ip(request: gr.Request | None) -> str | None:
    # Behind a trusted reverse proxy uvicorn already puts the forwarded address here.
    return request.client.host if request is not None and request.client else None


def pick(models: list[str], wanted: str | None, fallback: int = 0) -> str | None:
    if wanted in models:
        return wanted
    return models[min(fallback, len(models) - 1)] if models else None


def build_blocks(backend: Backend) -> gr.Blocks:
    ui = backend.ui
    timeout = backend.settings.request_timeout

    with gr.Blocks(title="queuechat", analytics_enabled=False) as demo:
        status = gr.Markdown(elem_id="status-strip")
        with gr.Tab("Chat", id="chat"):
            with gr.Row():
                model = gr.Dropdown(label="Model", choices=[], elem_id="chat-model", scale=5)
                refresh = gr.Button("↻ Refresh models", elem_id="refresh-models", scale=1)
            chatbot = gr.Chatbot(elem_id="chatbot", height=480, feedback_options=None, buttons=["copy"])
            with gr.Row():
                textbox = gr.Textbox(
                    show_label=False, placeholder="Type a message and press Enter", elem_id="chat-input", scale=6
                )
                send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
                stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", interactive=False, scale=1)
            with gr.Row():
                upvote = gr.Button("👍 Upvote", elem_id="chat-upvote", interactive=False)
                downvote = gr.Button("👎 Downvote", elem_id="chat-downvote", interactive=False)
                flag = gr.Button("⚠️ Flag", elem_id="chat-flag", interactive=False)
                regenerate = gr.Button("🔄 Regenerate", elem_id="chat-regenerate", interactive=False)
                clear = gr.Button("🗑️ Clear", elem_id="chat-clear")
            chat_notice = gr.Markdown(elem_id="chat-notice")
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                model_a = gr.Dropdown(label="Model A", choices=[], elem_id="compare-model-a")
                model_b = gr.Dropdown(label="Model B", choices=[], elem_id="compare-model-b")
            with gr.Row():
                chatbot_a = gr.Chatbot(
                    label="Model A", elem_id="chatbot-a", height=400, feedback_options=None, buttons=["copy"]
                )
                chatbot_b = gr.Chatbot(
                    label="Model B", elem_id="chatbot-b", height=400, feedback_options=None, buttons=["copy"]
                )
            with gr.Row():
                leftvote = gr.Button("👈 A is better", elem_id="compare-leftvote", interactive=False)
                rightvote = gr.Button("👉 B is better", elem_id="compare-rightvote", interactive=False)
                tievote = gr.Button("🤝 Tie", elem_id="compare-tievote", interactive=False)
                bothbad = gr.Button("👎 Both are bad", elem_id="compare-bothbad", interactive=False)
            with gr.Row():
                compare_text = gr.Textbox(
                    show_label=False, placeholder="One prompt for both models", elem_id="compare-input", scale=6
                )
                compare_send = gr.Button("Send", variant="primary", elem_id="compare-send", scale=1)
                compare_stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", interactive=False, scale=1)
            with gr.Row():
                compare_regenerate = gr.Button("🔄 Regenerate", elem_id="compare-regenerate", interactive=False)
                compare_clear = gr.Button("🗑️ Clear", elem_id="compare-clear")
            compare_notice = gr.Markdown(elem_id="compare-notice")
        with gr.Accordion("Parameters (both tabs)", open=False, elem_id="parameters"):
            system = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt")
            temperature = gr.Slider(
                0.0, 2.0, value=ui.temperature, step=0.05, label="Temperature", elem_id="temperature"
            )
            top_p = gr.Slider(0.05, 1.0, value=ui.top_p, step=0.05, label="Top P", elem_id="top-p")
            max_tokens = gr.Slider(
                16,
                ui.max_output_tokens_limit,
                value=ui.max_output_tokens,
                step=16,
                label="Max output tokens",
                elem_id="max-output-tokens",
            )

        # A factory, so every page load gets a conversation of its own. (The class itself would not do: Gradio
        # takes any dataclass, a class included, for a value to serialise into the page config.)
        session = gr.State(lambda: ChatSession())
        left = gr.State(lambda: ChatSession())
        right = gr.State(lambda: ChatSession())
        params_in = [system, temperature, top_p, max_tokens]

        # ---------------------------------------------------------------- models and status

        async def on_load(request: gr.Request) -> tuple[Any, ...]:
            models = await backend.models(fresh=False)
            wanted = request.query_params.get("model") if request else None
            return (
                gr.Dropdown(choices=models, value=pick(models, wanted)),
                gr.Dropdown(choices=models, value=pick(models, wanted)),
                gr.Dropdown(choices=models, value=pick(models, None, fallback=1)),
                await status_line(backend.producer),
            )

        async def on_refresh(current: str | None, a: str | None, b: str | None) -> tuple[Any, ...]:
            models = await backend.models(fresh=True)
            return (
                gr.Dropdown(choices=models, value=pick(models, current)),
                gr.Dropdown(choices=models, value=pick(models, a)),
                gr.Dropdown(choices=models, value=pick(models, b, fallback=1)),
                await status_line(backend.producer),
            )

        async def on_tick() -> str:
            return await status_line(backend.producer)

        model_outputs = [model, model_a, model_b, status]
        demo.load(on_load, None, model_outputs, concurrency_limit=None, show_progress="hidden")
        refresh.click(on_refresh, [model, model_a, model_b], model_outputs, concurrency_limit=None)
        gr.Timer(ui.status_interval).tick(on_tick, None, status, concurrency_limit=None, show_progress="hidden")

        # ---------------------------------------------------------------- chat

        chat_out = [chatbot, textbox, chat_notice, send, stop, regenerate, upvote, downvote, flag]

        def chat_view(s: ChatSession, *, text: Any = None, notice: str = "", streaming: bool = False) -> tuple:
            votable = not streaming and s.last_answered is not None
            return (
                chatbot_value(s),
                gr.skip() if text is None else text,
                notice,
                gr.Button(interactive=not streaming),
                gr.Button(interactive=streaming),
                gr.Button(interactive=not streaming and bool(s.turns)),
                gr.Button(interactive=votable),
                gr.Button(interactive=votable),
                gr.Button(interactive=votable),
            )

        def params_of(temp: float | None, top: float | None, max_out: float | None) -> Params:
            # Widgets inside a closed accordion have not rendered yet and send None (Gradio 6)
            return Params(
                temperature=ui.temperature if temp is None else float(temp),
                top_p=ui.top_p if top is None else float(top),
                max_tokens=ui.max_output_tokens if max_out is None else int(max_out),
            )

        async def stream_chat(s: ChatSession) -> AsyncIterator[tuple]:
            async for _ in reply(s, backend.producer, timeout):
                yield chat_view(s, streaming=True)
            yield chat_view(s)

        async def on_send(
            s: ChatSession,
            text: str,
            model_name: str | None,
            sys_prompt: str | None,
            temp: float,
            top: float,
            max_out: float,
        ) -> AsyncIterator[tuple]:
            if (s.streaming and not await s.settled()) or not text.strip():  # settled: sent right after Stop
                yield chat_view(s, streaming=s.streaming)
                return
            if not model_name:
                yield chat_view(s, notice="Pick a model first (press ↻ if the list is empty).")
                return
            try:
                s.check(text, max_chars=ui.max_input_chars, max_turns=ui.max_turns)
            except InputRejected as exc:
                yield chat_view(s, notice=str(exc))
                return
            s.system_prompt = sys_prompt or ""
            s.ask(text, model_name, params_of(temp, top, max_out))
            yield chat_view(s, text="", streaming=True)
            async for view in stream_chat(s):
                yield view

        async def on_regenerate(
            s: ChatSession, model_name: str | None, sys_prompt: str | None, temp: float, top: float, max_out: float
        ) -> AsyncIterator[tuple]:
            busy = s.streaming and not await s.settled()
            if busy or not model_name or s.retry(model_name, params_of(temp, top, max_out)) is None:
                yield chat_view(s, streaming=s.streaming)
                return
            s.system_prompt = sys_prompt or ""
            yield chat_view(s, streaming=True)
            async for view in stream_chat(s):
                yield view

        async def on_stop(s: ChatSession) -> None:
            s.stop()

        async def on_clear(s: ChatSession) -> tuple:
            s.clear()
            # Drawn once a running reply has wound down, so this and the reply's last frame, in whichever order
            # they arrive, both show the empty conversation ready for input.
            await s.settled(timeout=STOP_WAIT_SECONDS)
            return chat_view(s, text="", streaming=s.streaming)

        send_inputs = [session, textbox, model, *params_in]
        textbox.submit(on_send, send_inputs, chat_out)
        send.click(on_send, send_inputs, chat_out)
        regenerate.click(on_regenerate, [session, model, *params_in], chat_out)
        stop.click(on_stop, [session], None, concurrency_limit=None, show_progress="hidden")
        # the chat window's own trash icon must forget the conversation too, not just blank the window
        for trigger in (clear.click, chatbot.clear):
            trigger(on_clear, [session], chat_out, concurrency_limit=None)

        def chat_voter(kind: str) -> Callable[..., tuple]:
            def vote(s: ChatSession, request: gr.Request) -> tuple:
                if s.last_answered is None:
                    return chat_view(s, notice="Nothing to vote on yet.")
                backend.votes.chat_vote(kind, s, client_ip(request))
                view = chat_view(s, notice=f"Thanks, your {kind} was recorded.")
                # one vote per answer, as in FastChat
                return (*view[:6], *(gr.Button(interactive=False) for _ in range(3)))

            return vote

        for button, kind in ((upvote, "upvote"), (downvote, "downvote"), (flag, "flag")):
            button.click(chat_voter(kind), [session], chat_out, concurrency_limit=None)

        # ---------------------------------------------------------------- compare

        compare_votes = [leftvote, rightvote, tievote, bothbad]
        compare_out = [
            chatbot_a,
            chatbot_b,
            compare_text,
            compare_notice,
            compare_send,
            compare_stop,
            compare_regenerate,
            *compare_votes,
        ]

        def compare_view(
            a: ChatSession, b: ChatSession, *, text: Any = None, notice: str = "", streaming: bool = False
        ) -> tuple:
            votable = not streaming and a.last_answered is not None and b.last_answered is not None
            return (
                chatbot_value(a),
                chatbot_value(b),
                gr.skip() if text is None else text,
                notice,
                gr.Button(interactive=not streaming),
                gr.Button(interactive=streaming),
                gr.Button(interactive=not streaming and bool(a.turns)),
                *(gr.Button(interactive=votable) for _ in compare_votes),
            )

        async def stream_both(a: ChatSession, b: ChatSession) -> AsyncIterator[tuple]:
            async for _ in side_by_side(reply(a, backend.producer, timeout), reply(b, backend.producer, timeout)):
                yield compare_view(a, b, streaming=True)
            yield compare_view(a, b)

        async def on_compare(
            a: ChatSession,
            b: ChatSession,
            text: str,
            name_a: str | None,
            name_b: str | None,
            sys_prompt: str | None,
            temp: float,
            top: float,
            max_out: float,
        ) -> AsyncIterator[tuple]:
            busy = not (await a.settled() and await b.settled())
            if busy or not text.strip():
                yield compare_view(a, b, streaming=busy)
                return
            if not name_a or not name_b:
                yield compare_view(a, b, notice="Pick two models first (press ↻ if the lists are empty).")
                return
            try:
                for s in (a, b):
                    s.check(text, max_chars=ui.max_input_chars, max_turns=ui.max_turns)
            except InputRejected as exc:
                yield compare_view(a, b, notice=str(exc))
                return
            params = params_of(temp, top, max_out)
            for s, name in ((a, name_a), (b, name_b)):
                s.system_prompt = sys_prompt or ""
                s.ask(text, name, params)
            yield compare_view(a, b, text="", streaming=True)
            async for view in stream_both(a, b):
                yield view

        async def on_compare_regenerate(
            a: ChatSession,
            b: ChatSession,
            name_a: str | None,
            name_b: str | None,
            sys_prompt: str | None,
            temp: float,
            top: float,
            max_out: float,
        ) -> AsyncIterator[tuple]:
            busy = not (await a.settled() and await b.settled())
            if busy or not name_a or not name_b or not a.turns or not b.turns:
                yield compare_view(a, b, streaming=busy)
                return
            params = params_of(temp, top, max_out)
            for s, name in ((a, name_a), (b, name_b)):
                s.system_prompt = sys_prompt or ""
                s.retry(name, params)
            yield compare_view(a, b, streaming=True)
            async for view in stream_both(a, b):
                yield view

        async def on_compare_stop(a: ChatSession, b: ChatSession) -> None:
            a.stop()
            b.stop()

        async def on_compare_clear(a: ChatSession, b: ChatSession) -> tuple:
            a.clear()
            b.clear()
            await a.settled(timeout=STOP_WAIT_SECONDS)
            await b.settled(timeout=STOP_WAIT_SECONDS)
            return compare_view(a, b, text="", streaming=a.streaming or b.streaming)

        compare_inputs = [left, right, compare_text, model_a, model_b, *params_in]
        compare_text.submit(on_compare, compare_inputs, compare_out)
        compare_send.click(on_compare, compare_inputs, compare_out)
        compare_regenerate.click(on_compare_regenerate, [left, right, model_a, model_b, *params_in], compare_out)
        compare_stop.click(on_compare_stop, [left, right], None, concurrency_limit=None, show_progress="hidden")
        for trigger in (compare_clear.click, chatbot_a.clear, chatbot_b.clear):
            trigger(on_compare_clear, [left, right], compare_out, concurrency_limit=None)

        def compare_voter(kind: str) -> Callable[..., tuple]:
            def vote(a: ChatSession, b: ChatSession, request: gr.Request) -> tuple:
                if a.last_answered is None or b.last_answered is None:
                    return compare_view(a, b, notice="Nothing to vote on yet.")
                backend.votes.compare_vote(kind, a, b, client_ip(request))
                view = compare_view(a, b, notice="Thanks, your vote was recorded.")
                return (*view[:7], *(gr.Button(interactive=False) for _ in compare_votes))

            return vote

        for button, kind in zip(compare_votes, ("leftvote", "rightvote", "tievote", "bothbad_vote"), strict=True):
            button.click(compare_voter(kind), [left, right], compare_out, concurrency_limit=None)

    demo.queue(default_concurrency_limit=ui.concurrency_count, api_open=False)
    return demo
