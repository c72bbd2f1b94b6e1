"""The web UI's own settings, read from the environment (prefix ``QUEUECHAT_WEBUI_``) and ``queuechat webui`` flags.

Where and how to reach Redis stays in :class:`broker.settings.Settings`, shared with every other process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebUISettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUEUECHAT_WEBUI_", extra="ignore")

    # FastChat's limits: a message of at most 12,000 characters, a conversation of at most 50 turns
    max_input_chars: int = Field(default=12_000, gt=0, description="Longest message a person may send.")
    max_turns: int = Field(default=50, gt=0, description="Turns after which a conversation must be cleared.")
    log_dir: Path = Field(default=Path("queuechat-logs"), description="Where the per-day vote logs are written.")
    model_list_mode: Literal["once", "reload"] = Field(
        default="reload", description="once: read the live models at the first page load; reload: at every load."
    )
    concurrency_count: int = Field(default=10, gt=0, description="Replies streamed at once per event (Gradio).")
    status_interval: float = Field(default=5.0, gt=0, description="Seconds between refreshes of the status strip.")
    # Greedy and a few hundred tokens: what lets the small default model (SmolLM2-135M) answer a question as the
    # API at temperature 0 does ("The capital of France is Paris."); at 0.7 it rambles.
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Initial position of the slider.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Initial position of the slider.")
    max_output_tokens: int = Field(default=256, gt=0, description="Initial position of the slider.")
    max_output_tokens_limit: int = Field(default=4096, gt=0, description="Right end of the slider.")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.model_dump().items())
        return f"WebUISettings({fields})"
