"""The Gradio Blocks: a Chat tab, a Compare tab, a status strip (mounted into an app by :mod:`webui.mount`).

This module lays the widgets out; both tabs' handlers are one :class:`webui.tabs.Tab` each (one conversation for
Chat, two for Compare), which turns widget values into :mod:`webui.chat` calls and sessions back into a typed
:class:`webui.tabs.TabView`.
"""

from __future__ import annotations

import os
from typing import Any

# Before gradio is imported: no telemetry and no version check from any Blocks this process makes, so the UI
# works where only the loopback is reachable.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from webui.backend import Backend
from webui.chat import ChatSession
from webui.status import status_line
from webui.tabs import Tab, TabWidgets
from webui.votes import CHAT_VOTES, COMPARE_VOTES

# Links under the page: the API page would advertise handlers that are not an API anyone should script.
FOOTER_LINKS: list[Any] = ["gradio", "settings"]


def pick(models: list[str], wanted: str | None, fallback: int = 0) -> str | None:
    if wanted in models:
        return wanted
    return models[min(fallback, len(models) - 1)] if models else None


def build_blocks(backend: Backend) -> gr.Blocks:
    ui = backend.ui

    demo: gr.Blocks
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
        # Open: the parameters every answer is made with are in sight (a closed accordion hid a temperature of 0.7).
        with gr.Accordion("Parameters (both tabs)", open=True, elem_id="parameters"):
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

        # ---------------------------------------------------------------- the two tabs

        chat = Tab(
            backend,
            size=1,
            votes=CHAT_VOTES,
            record_vote=lambda kind, sessions, ip: backend.votes.chat_vote(kind, sessions[0], ip),
            pick_models="Pick a model first (press ↻ if the list is empty).",
            thanks=lambda kind: f"Thanks, your {kind} was recorded.",
        )
        chat_widgets = TabWidgets(
            [chatbot], textbox, chat_notice, send, stop, regenerate, [upvote, downvote, flag], clear
        )
        chat.wire(chat_widgets, [session], [model], params_in)

        compare = Tab(
            backend,
            size=2,
            votes=COMPARE_VOTES,
            record_vote=lambda kind, sessions, ip: backend.votes.compare_vote(kind, sessions[0], sessions[1], ip),
            pick_models="Pick two models first (press ↻ if the lists are empty).",
            thanks=lambda _kind: "Thanks, your vote was recorded.",
        )
        compare_widgets = TabWidgets(
            [chatbot_a, chatbot_b],
            compare_text,
            compare_notice,
            compare_send,
            compare_stop,
            compare_regenerate,
            [leftvote, rightvote, tievote, bothbad],
            compare_clear,
        )
        compare.wire(compare_widgets, [left, right], [model_a, model_b], params_in)

    demo.queue(default_concurrency_limit=ui.concurrency_count, api_open=False)
    return demo
