"""A batch worker that ran batches which ended early (their input file was gone) still runs the next batch. Each
such run used to leave its lease and status watchers behind: a cancel can be lost in Python 3.11's
``asyncio.wait_for`` (through which redis-py sends commands) when it meets a command that just finished, and a
watcher that lost its cancel looped on, so ``asyncio.run()`` never returned and every later batch stayed
``validating``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from openai import OpenAI

from broker.settings import Settings
from tests.batch_support import BatchWorkers, batch_settings_of, chat_lines, results, upload, wait_batch
from tests.conftest import ApiServer, RunningWorker, wait_for

FAILING = 10


def test_ten_batches_that_fail_early_then_a_good_one_completes(
    settings: Settings,
    tmp_path: Path,
    start_api: Callable[..., ApiServer],
    start_worker: Callable[..., RunningWorker],
    batch_workers: BatchWorkers,
) -> None:
    start_worker()
    api = start_api(batch_settings_of(settings, tmp_path / "files"))
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    client = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)

    failing = []
    for _ in range(FAILING):  # each batch's input file is deleted before any batch worker runs it
        file_id = upload(client, chat_lines(2))
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        assert client.files.delete(file_id).deleted
        failing.append(batch.id)
    good = client.batches.create(
        input_file_id=upload(client, chat_lines(3)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch_workers.start()  # one batch worker takes the runs in order

    for batch_id in failing:
        failed = wait_batch(client, batch_id, timeout=60)
        assert failed.status == "failed" and failed.errors and failed.errors.data
        assert failed.errors.data[0].code == "input_file_missing"
    done = wait_batch(client, good.id, timeout=120)
    assert done.status == "completed", done
    assert sorted(r["custom_id"] for r in results(client, done.output_file_id)) == [f"request-{i}" for i in range(3)]
