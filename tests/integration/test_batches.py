"""The Batch API end to end with the official openai client: files, batches, an rq batch worker process, the tiny
model's worker, results matched by custom_id."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from broker.batches import batch_progress
from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from queuechat.cli import app
from tests.batch_support import (
    BatchWorkers,
    batch_settings_of,
    chat_lines,
    jsonl,
    results,
    upload,
    wait_batch,
)
from tests.conftest import ApiServer, RunningWorker, wait_for


def openai_client(api: ApiServer) -> OpenAI:
    return OpenAI(base_url=f"{api.base_url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture
def batch_api(
    settings: Settings, tmp_path: Path, start_api: Callable[..., ApiServer], start_worker: Callable[..., RunningWorker]
) -> Callable[..., OpenAI]:
    """Factory: the tiny model's worker (``slots`` sequences) and an API with this test's files dir and rq queue."""

    def start(slots: int = 16, model_worker: bool = True) -> OpenAI:
        if model_worker:
            start_worker(limit_worker_concurrency=slots)
        api = start_api(batch_settings_of(settings, tmp_path / "files"))
        if model_worker:
            wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
        return openai_client(api)

    return start


def test_a_200_line_batch_answers_every_line_once(
    batch_api: Callable[..., OpenAI], batch_workers: BatchWorkers, settings: Settings
) -> None:
    client = batch_api()
    batch_workers.start()
    lines = chat_lines(200)
    lines[17]["body"]["max_tokens"] = -1  # valid JSONL, invalid request: the error file reports it
    lines[42]["body"]["model"] = "no-such-model"
    file_id = upload(client, lines)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating" and batch.request_counts and batch.request_counts.total == 200

    batch = wait_batch(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts and batch.request_counts.model_dump() == {"total": 200, "completed": 198, "failed": 2}
    assert batch.completed_at and batch.in_progress_at and batch.finalizing_at

    output = results(client, batch.output_file_id)
    errors = results(client, batch.error_file_id)
    by_id = {r["custom_id"]: r for r in output + errors}
    assert len(output) + len(errors) == 200 == len(by_id)  # each line exactly once, whatever the order
    for i in range(200):
        record = by_id[f"request-{i}"]
        assert set(record) == {"id", "custom_id", "response", "error"}
        response = record["response"]
        if i == 17:
            assert response["status_code"] == 400
            assert response["body"]["error"]["param"] == "max_tokens"
        elif i == 42:
            assert response["status_code"] == 404
            assert response["body"]["error"]["code"] == "model_not_found"
        else:
            assert response["status_code"] == 200 and record["error"] is None
            body = response["body"]
            assert body["object"] == "chat.completion" and body["id"] == response["request_id"]
            assert body["usage"]["completion_tokens"] == 4
            assert body["choices"][0]["finish_reason"] == "length"
    # the same request answered online gives the same text (greedy): a line runs as the endpoint runs it
    online = client.chat.completions.create(**lines[5]["body"])
    assert (
        by_id["request-5"]["response"]["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    )

    assert client.files.retrieve(batch.output_file_id or "").purpose == "batch_output"
    assert [b.id for b in client.batches.list().data] == [batch.id]
    assert settings.redis_url
    [progress] = batch_progress(sync_client(settings.redis_url), Keys(settings.key_prefix))
    assert (progress.id, progress.status, progress.done, progress.total) == (batch.id, "completed", 200, 200)
    # and queuechat info shows it
    shown = CliRunner().invoke(app, ["info", "-r", "-u", settings.redis_url, "--key-prefix", settings.key_prefix])
    assert shown.exit_code == 0, shown.output
    assert f"batch {batch.id} status=completed endpoint=/v1/chat/completions done=200/200" in shown.output


def test_a_completions_batch(batch_api: Callable[..., OpenAI], batch_workers: BatchWorkers) -> None:
    client = batch_api()
    batch_workers.start()
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tiny", "prompt": ["Once upon", "a time"], "max_tokens": 3}}
        for i in range(5)
    ]  # fmt: skip
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/completions", completion_window="24h"
    )
    batch = wait_batch(client, batch.id)
    output = results(client, batch.output_file_id)
    assert batch.status == "completed" and sorted(r["custom_id"] for r in output) == [f"c{i}" for i in range(5)]
    assert all(len(r["response"]["body"]["choices"]) == 2 for r in output)


def test_cancel_stops_feeding_and_keeps_the_partial_output(
    batch_api: Callable[..., OpenAI], batch_workers: BatchWorkers
) -> None:
    client = batch_api(slots=2)
    batch_workers.start()
    batch = client.batches.create(
        input_file_id=upload(client, chat_lines(200, max_tokens=24)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(lambda: (client.batches.retrieve(batch.id).request_counts or batch.request_counts).completed >= 5, 60)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    batch = wait_batch(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at and batch.cancelling_at
    assert batch.request_counts
    output = results(client, batch.output_file_id)
    print(f"\ncancelled after {len(output)} of 200 lines")
    assert 5 <= len(output) == batch.request_counts.completed < 200
    assert len({r["custom_id"] for r in output}) == len(output)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)  # nothing left to cancel


def test_a_batch_cancelled_before_any_worker_took_it(batch_api: Callable[..., OpenAI]) -> None:
    client = batch_api(model_worker=False)  # and no batch worker: the run waits in the rq queue
    batch = client.batches.create(
        input_file_id=upload(client, chat_lines(3)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.cancel(batch.id)
    assert batch.status == "cancelled" and batch.output_file_id is None


def test_file_and_batch_errors_are_openai_shaped(batch_api: Callable[..., OpenAI], settings: Settings) -> None:
    client = batch_api(model_worker=False)
    good = chat_lines(3)
    bad_lines = {
        b"not json\n": "Line 2: not valid JSON",
        b'{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n': "Line 2: invalid 'method'",
        b'{"custom_id": "x", "method": "POST", "url": "/v1/nothing", "body": {}}\n': "Line 2: url must be",
        b'{"custom_id": "request-0", "method": "POST", "url": "/v1/completions", "body": {}}\n': "used twice",
        b"[1, 2]\n": "Line 2: expected a JSON object",
    }
    for bad, message in bad_lines.items():
        content = jsonl(good[:1]) + bad + jsonl(good[1:])
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("in.jsonl", content), purpose="batch")
        assert message in caught.value.message and caught.value.body["param"] == "file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="no requests"):
        client.files.create(file=("in.jsonl", b"\n\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("in.jsonl", jsonl(good)), purpose="fine-tune")
    assert caught.value.body["param"] == "purpose"  # type: ignore[index]

    file_id = upload(client, good)
    assert client.files.retrieve(file_id).bytes == len(jsonl(good))
    assert client.files.content(file_id).content == jsonl(good)
    for endpoint, param in [("/v1/embeddings", "endpoint"), ("/v1/models", "endpoint"), ("/v1/completions",
                            "input_file_id")]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as caught:
            client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h")
        assert caught.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")
    assert caught.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_an_upload_over_the_size_limit_is_refused(
    settings: Settings, tmp_path: Path, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(batch_settings_of(settings, tmp_path / "files", files_max_bytes=1000))
    client = openai_client(api)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("in.jsonl", jsonl(chat_lines(20))), purpose="batch")
    assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"  # type: ignore[index]
    assert list((tmp_path / "files").iterdir()) == []  # nothing half-written is kept
    raw = httpx.post(f"{api.base_url}/v1/files", json={"purpose": "batch"})
    assert raw.status_code == 400 and raw.json()["error"]["param"]


def test_rq_info_shows_the_batch_queue_and_its_worker(batch_workers: BatchWorkers, settings: Settings) -> None:
    batch_workers.start()
    assert settings.redis_url
    queue = batch_workers.settings.batch_queue

    def shown() -> str | None:
        out = subprocess.run(
            [sys.executable, "-m", "rq.cli", "info", "-u", settings.redis_url or "", queue],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return out if queue in out and "1 workers" in out else None

    text = wait_for(shown, timeout=30, interval=0.5)
    print(text)


def test_counts_survive_a_line_reported_twice(settings: Settings) -> None:
    """A resumed batch may record a line its predecessor already recorded: it is counted once."""
    import asyncio

    from broker.batches import BatchStore
    from broker.connection import async_client

    async def go() -> dict[str, int]:
        assert settings.redis_url
        client = async_client(settings.redis_url)
        store = BatchStore(client, Keys(settings.key_prefix))
        meta = {"id": "b1", "object": "batch", "endpoint": "/v1/completions", "created_at": 0}
        await store.add_batch(meta, 2, "r", owner="")
        for ok in (True, True, False):
            await store.mark_done("b1", "line-1", ok)
        obj = await store.batch("b1")
        await client.aclose()
        assert obj
        return dict(obj["request_counts"])

    assert asyncio.run(go()) == {"total": 2, "completed": 1, "failed": 0}


def test_a_result_file_drops_a_torn_last_line_on_reopening(tmp_path: Path) -> None:
    from batch.filestore import ResultFile

    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_id": "c", "resp')  # killed mid-write
    result = ResultFile(path)
    assert result.custom_ids == {"a", "b"}
    result.append({"custom_id": "c"})
    result.close()
    assert path.read_bytes().splitlines() == [b'{"custom_id": "a"}', b'{"custom_id": "b"}', b'{"custom_id":"c"}']
