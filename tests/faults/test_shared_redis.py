"""Two deployments on one Redis, each under its own key prefix and with its own files directory, set up as the
README says (no batch queue named by hand): each one's batches are run by its own batch worker, and all complete.
A shared rq queue would let one deployment's batch worker take the other's runs, whose files it cannot see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.batch_support import chat_lines, results, upload, wait_batch
from tests.faults.conftest import Cluster

BATCHES = 4
LINES = 6


@pytest.fixture
def second_cluster(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    logs = tmp_path / "second"
    logs.mkdir()
    running = Cluster(redis_url, tiny_model_dir, logs)
    try:
        yield running
    finally:
        running.stop()


def test_two_prefixes_on_one_redis_run_only_their_own_batches(
    cluster: Cluster, second_cluster: Cluster, tmp_path: Path
) -> None:
    deployments = [cluster, second_cluster]
    clients = []
    for n, deployment in enumerate(deployments):
        deployment.env.pop("QUEUECHAT_BATCH_QUEUE", None)  # the default: what a deployment gets
        deployment.env["QUEUECHAT_FILES_DIR"] = str(tmp_path / f"files-{n}")
        deployment.start_worker("worker", slots=8)
        base_url = deployment.start_api()
        deployment.wait_workers(1)
        deployment.start_batch_worker("batch-worker")
        clients.append(OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=60))

    created: list[list[str]] = [[], []]
    for _ in range(BATCHES):  # interleaved, so both queues hold runs at once
        for n, client in enumerate(clients):
            batch = client.batches.create(
                input_file_id=upload(client, chat_lines(LINES)),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            created[n].append(batch.id)

    for n, (client, deployment) in enumerate(zip(clients, deployments, strict=True)):
        other = deployments[1 - n]
        for batch_id in created[n]:
            batch = wait_batch(client, batch_id, timeout=240)
            assert batch.status == "completed", (batch.status, batch.errors)
            assert len(results(client, batch.output_file_id)) == LINES
            assert f"batch {batch_id}: completed" in deployment.log_text("batch-worker")
            assert batch_id not in other.log_text("batch-worker")
