"""Files and batches belong to the API key that made them: with two keys, neither sees nor touches the other's
files (inputs and a batch's results) or batches, through the official openai client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from broker.settings import Settings
from tests.batch_support import BatchWorkers, batch_settings_of, chat_lines, results, upload, wait_batch
from tests.conftest import ApiServer, RunningWorker, wait_for

KEYS = ["sk-alice", "sk-bob"]


def client_for(api: ApiServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{api.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def assert_not_found(call: Callable[[], object]) -> None:
    """A 404 in OpenAI's shape, as for an id that does not exist: another key's record is not admitted to."""
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"


def test_another_key_cannot_see_or_touch_a_keys_files_and_batches(
    settings: Settings,
    tmp_path: Path,
    start_api: Callable[..., ApiServer],
    start_worker: Callable[..., RunningWorker],
    batch_workers: BatchWorkers,
) -> None:
    start_worker()
    api = start_api(batch_settings_of(settings, tmp_path / "files", api_keys=KEYS))
    alice, bob = (client_for(api, key) for key in KEYS)
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models", headers={"Authorization": "Bearer sk-bob"}).json()["data"])
    batch_workers.start()

    input_id = upload(alice, chat_lines(3))
    batch = alice.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_batch(alice, batch.id)
    assert batch.status == "completed" and batch.output_file_id
    output_id = batch.output_file_id
    assert len(results(alice, output_id)) == 3  # the owner reads its batch's results

    for file_id in (input_id, output_id):
        assert_not_found(lambda f=file_id: bob.files.retrieve(f))  # type: ignore[misc]
        assert_not_found(lambda f=file_id: bob.files.content(f))  # type: ignore[misc]
        assert_not_found(lambda f=file_id: bob.files.delete(f))  # type: ignore[misc]
    assert bob.files.list().data == []
    assert_not_found(lambda: bob.batches.retrieve(batch.id))
    assert_not_found(lambda: bob.batches.cancel(batch.id))
    assert bob.batches.list().data == []
    assert_not_found(
        lambda: bob.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h")
    )

    # Bob's own file and batch are his alone, and Alice's lists stay hers.
    bobs_file = upload(bob, chat_lines(2))
    bobs_batch = bob.batches.create(input_file_id=bobs_file, endpoint="/v1/chat/completions", completion_window="24h")
    assert [f.id for f in bob.files.list().data] == [bobs_file]
    assert [b.id for b in bob.batches.list().data] == [bobs_batch.id]
    assert bobs_file not in {f.id for f in alice.files.list().data} >= {input_id, output_id}
    assert [b.id for b in alice.batches.list().data] == [batch.id]
    assert_not_found(lambda: alice.batches.retrieve(bobs_batch.id))

    # Nothing Bob tried removed Alice's files: she still reads and deletes them.
    assert alice.files.content(input_id).content
    assert alice.files.delete(output_id).deleted
    assert_not_found(lambda: alice.files.retrieve(output_id))
