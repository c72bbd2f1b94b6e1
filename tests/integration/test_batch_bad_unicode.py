"""A batch line JSON accepts but no model can take (a lone surrogate escape, ``"\\ud800"``): it goes to the error
file with a 400 naming where it is, and every other line of the batch runs. Before, the runner's own reading of the
file failed on it at every run, and the batch stayed ``in_progress`` with none of its lines run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from broker.settings import Settings
from tests.batch_support import BatchWorkers, batch_settings_of, chat_lines, jsonl, results, upload, wait_batch
from tests.conftest import ApiServer, RunningWorker, wait_for


def test_a_line_with_a_lone_surrogate_goes_to_the_error_file_and_the_others_run(
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
    batch_workers.start()

    lines = chat_lines(20)
    lines[7]["body"]["messages"][0]["content"] = "Say \ud800 please."  # json.dumps writes it as the escape \ud800
    content = jsonl(lines)
    assert b'"Say \\ud800 please."' in content
    file_id = upload(client, lines)  # the upload check accepts it, as OpenAI's would: it is valid JSON
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

    batch = wait_batch(client, batch.id, timeout=180)
    assert batch.status == "completed", batch
    assert batch.request_counts and batch.request_counts.model_dump() == {"total": 20, "completed": 19, "failed": 1}
    output = results(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in output) == sorted(f"request-{i}" for i in range(20) if i != 7)
    assert all(r["response"]["status_code"] == 200 for r in output)
    [error] = results(client, batch.error_file_id)
    assert error["custom_id"] == "request-7"
    assert error["response"]["status_code"] == 400
    body = error["response"]["body"]["error"]
    assert body["type"] == "invalid_request_error" and body["param"] == "messages[0].content"
    assert "Unicode" in body["message"]


def test_lines_the_results_could_not_hold_are_refused_at_upload(
    settings: Settings, tmp_path: Path, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(batch_settings_of(settings, tmp_path / "files"))
    client = OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    good = jsonl(chat_lines(1))
    surrogate_id = json.dumps({**chat_lines(1)[0], "custom_id": "id-\udc00"}).encode() + b"\n"
    deep = (
        b'{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", "body": {"x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}\n"
    )
    for bad, message in [(surrogate_id, "Line 2: invalid 'custom_id'"), (deep, "Line 2: the JSON is nested")]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("in.jsonl", good + bad), purpose="batch")
        assert message in caught.value.message and caught.value.body["param"] == "file"  # type: ignore[index]
