"""The README's Batch API snippet, as written, against a real system: API, model worker and batch worker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from broker.settings import Settings
from tests.batch_support import REPO, BatchWorkers, batch_settings_of
from tests.conftest import ApiServer, RunningWorker, wait_for


def readme_batch_snippet() -> str:
    section = (REPO / "README.md").read_text().split("\n## Batches\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Batches section has no Python snippet"
    return match.group(1)


def test_the_readme_batch_snippet_runs_as_written(
    settings: Settings,
    tmp_path: Path,
    start_api: Callable[..., ApiServer],
    start_worker: Callable[..., RunningWorker],
    batch_workers: BatchWorkers,
) -> None:
    start_worker("smollm2")  # the tiny model under the name the snippet asks for
    api = start_api(batch_settings_of(settings, tmp_path / "files"))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    batch_workers.start()
    snippet = readme_batch_snippet()
    assert "http://127.0.0.1:8000/v1" in snippet
    script = tmp_path / "snippet.py"
    script.write_text(snippet.replace("http://127.0.0.1:8000/v1", f"{api.base_url}/v1"))
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("completed ")
    answered = [json.loads(line) for line in run.stdout.splitlines()[1:] if line.strip()]
    assert sorted(a["custom_id"] for a in answered) == ["q0", "q1"]
    assert all(a["response"]["status_code"] == 200 for a in answered)
