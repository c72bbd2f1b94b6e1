"""The defaults the README gives for settings are the code's: every `QUEUECHAT_…` row of a settings table and every
`QUEUECHAT_…` (value) in its text names the default its settings class declares, and the max_tokens a request gets
when it leaves it out is the one the Parameters table names. A default changed in one place only fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from broker.settings import Settings
from serving.requests import DEFAULT_COMPLETION_MAX_TOKENS, ChatCompletionRequest, CompletionRequest
from webui.settings import WebUISettings
from workers.settings import WorkerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
UNITS = {"": 1, "s": 1, "MiB": 2**20, "GiB": 2**30}
# "12000", "33554432 (32 MiB)", "0.5", "200 MiB", "30 s", "none", "true"
VALUE = re.compile(r"^(?:(?P<word>none|true|false)|(?P<number>\d[\d,]*(?:\.\d+)?)(?: (?P<unit>s|MiB|GiB))?)\b")


def _parse(text: str) -> tuple[bool, Any]:
    """(True, the value) when ``text`` begins with a plain value; (False, None) for prose ("see below")."""
    match = VALUE.match(text.strip())
    if match is None:
        return False, None
    if match["word"]:
        return True, {"none": None, "true": True, "false": False}[match["word"]]
    number = float(match["number"].replace(",", "")) * UNITS[match["unit"] or ""]
    return True, number


def _default(env: str) -> tuple[bool, Any]:
    """The default of the setting read from ``env``, from the class that reads it (web UI, shared, worker)."""
    name = env.removeprefix("QUEUECHAT_").lower()
    classes: list[tuple[type[BaseSettings], str]] = [(WebUISettings, "webui_"), (Settings, ""), (WorkerSettings, "")]
    for cls, prefix in classes:
        if name.startswith(prefix) and (field := cls.model_fields.get(name.removeprefix(prefix))) is not None:
            return True, field.default
    return False, None


def _documented() -> list[tuple[str, str]]:
    """(variable, the text that gives its default): settings-table rows and "`QUEUECHAT_X` (value)" in the text."""
    rows = re.findall(r"^\| `(QUEUECHAT_[A-Z0-9_]+)` \| ([^|]*) \|", README, re.M)
    inline = re.findall(r"`(QUEUECHAT_[A-Z0-9_]+)` \(([^)]*)\)", README)
    return [(env, text) for env, text in [*rows, *inline] if _parse(text)[0] and _default(env)[0]]


def test_the_readme_documents_settings_defaults() -> None:
    """The check finds the settings it is for (a README rewritten past its patterns would pass it vacuously)."""
    named = {env for env, _ in _documented()}
    assert {
        "QUEUECHAT_MAX_TOKENS_CAP",
        "QUEUECHAT_MAX_REQUEST_BYTES",
        "QUEUECHAT_MAX_WORKER_DEATHS",
        "QUEUECHAT_WEBUI_TEMPERATURE",
        "QUEUECHAT_WEBUI_TOP_P",
        "QUEUECHAT_WEBUI_MAX_OUTPUT_TOKENS",
    } <= named


@pytest.mark.parametrize(("env", "text"), _documented(), ids=lambda v: str(v)[:40])
def test_a_documented_default_is_the_codes(env: str, text: str) -> None:
    _, documented = _parse(text)
    _, default = _default(env)
    if documented is None or isinstance(documented, bool):
        assert default is documented, (env, text, default)
    else:
        assert isinstance(default, int | float) and float(default) == documented, (env, text, default)


def test_the_max_tokens_left_out_is_the_one_documented() -> None:
    [row] = [line for line in README.splitlines() if line.startswith("| `max_tokens`, `max_completion_tokens`")]
    match = re.search(r"Left out: (\d+) on completions", row)
    assert match, row
    assert int(match[1]) == DEFAULT_COMPLETION_MAX_TOKENS
    assert CompletionRequest(model="m", prompt="p").sampling_params().max_tokens == DEFAULT_COMPLETION_MAX_TOKENS
    # chat: "the rest of the context" (the worker fills it in, at most QUEUECHAT_MAX_TOKENS_CAP)
    assert "the rest of the context on chat" in row
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert chat.sampling_params().max_tokens is None
