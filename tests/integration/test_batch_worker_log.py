"""The batch worker's output: rq's routine maintenance (every few seconds) is logged at DEBUG, not INFO."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from broker.settings import Settings
from tests.batch_support import REPO, batch_env, batch_settings_of
from tests.conftest import wait_for


def _start(settings: Settings, log: Path, level: str) -> subprocess.Popen[bytes]:
    env = {**batch_env(settings), "QUEUECHAT_HEARTBEAT_TTL": "1"}  # a maintenance round every second
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "queuechat", "batch-worker", "--log-level", level],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=out,
        )


def test_maintenance_rounds_are_logged_at_debug_only(settings: Settings, tmp_path: Path) -> None:
    info_log, debug_log = tmp_path / "info.log", tmp_path / "debug.log"
    info = _start(batch_settings_of(settings, tmp_path / "files-a"), info_log, "info")
    debug = _start(
        batch_settings_of(settings.model_copy(update={"key_prefix": settings.key_prefix + "d"}), tmp_path / "files-b"),
        debug_log,
        "debug",
    )
    try:
        # the debug worker shows the rounds (so they ran meanwhile in the info worker too, started at the same time)
        wait_for(lambda: debug_log.read_text().count("cleaning registries for queue") >= 3, timeout=60, interval=0.2)
        time.sleep(1.0)  # a last round of the info worker's, had it one
    finally:
        for process in (info, debug):
            process.terminate()
            process.wait(timeout=30)
    info_text = info_log.read_text()
    assert "Listening on" in info_text  # the worker ran and logged its INFO lines
    assert "cleaning registries" not in info_text
    assert "cleaning group registries" not in info_text
    # kept, at DEBUG, for whoever asks for it
    assert re.search(r"DEBUG rq\.worker: .*cleaning registries for queue", debug_log.read_text())
