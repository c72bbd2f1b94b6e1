"""A batch worker SIGKILLed in the middle of a batch: another batch worker resumes the batch, and every line is in
the results exactly once (none lost, none repeated)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from openai import OpenAI

from tests.batch_support import chat_lines, results, upload, wait_batch
from tests.faults.conftest import Cluster


def test_sigkill_the_batch_worker_mid_batch_then_restart(cluster: Cluster, tmp_path: Path) -> None:
    cluster.env.update(
        {
            "QUEUECHAT_FILES_DIR": str(tmp_path / "files"),
            "QUEUECHAT_BATCH_QUEUE": f"queuechat-batch-{cluster.prefix}",
            "QUEUECHAT_BATCH_MAX_IN_FLIGHT": "8",
        }
    )
    cluster.start_worker("worker", slots=4)
    base_url = cluster.start_api()
    cluster.wait_workers(1)
    first = cluster.start_batch_worker("batch-1")
    client = OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=60)
    batch = client.batches.create(
        input_file_id=upload(client, chat_lines(200, max_tokens=16)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 120
    while (client.batches.retrieve(batch.id).request_counts or batch.request_counts).completed < 40:
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = client.batches.retrieve(batch.id)
    assert at_kill.status == "in_progress" and at_kill.request_counts
    assert at_kill.request_counts.completed < 200, "the batch finished before the fault could be injected"

    cluster.start_batch_worker("batch-2")
    batch = wait_batch(client, batch.id, timeout=180)
    output = results(client, batch.output_file_id)
    errors = results(client, batch.error_file_id)
    ids = [r["custom_id"] for r in output + errors]
    print(
        f"\nbatch worker SIGKILLed after {at_kill.request_counts.completed} of 200 lines; "
        f"after the restart: {batch.status}, {len(output)} answered, {len(errors)} errors"
    )
    assert batch.status == "completed"
    assert sorted(ids) == sorted(f"request-{i}" for i in range(200))  # every line, exactly once
    assert errors == []
    assert batch.request_counts and batch.request_counts.model_dump() == {"total": 200, "completed": 200, "failed": 0}
    assert "queued it again" in cluster.log_text("batch-2")
    assert "resuming" in cluster.log_text("batch-2")
