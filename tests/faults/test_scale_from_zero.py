"""Scale from zero with real processes: `python -m api` started with QUEUECHAT_WAIT_FOR_WORKER and no worker keeps
20 requests waiting, and a `python -m workers` started 5 s later answers every one of them."""

from __future__ import annotations

import json
import threading
import time

from tests.conftest import wait_for
from tests.faults.conftest import Cluster
from tests.integration.test_scale_from_zero import REQUESTS, WORKER_LATE_S, _ask, _metric


def test_a_worker_started_after_the_requests_answers_them_all(cluster: Cluster) -> None:
    cluster.env["QUEUECHAT_WAIT_FOR_WORKER"] = f"{cluster.model}=50"  # declared: this Redis never saw the model
    base_url = cluster.start_api()
    results: dict[int, tuple[int, str]] = {}

    def ask(index: int) -> None:
        results[index] = _ask(base_url, index)

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(REQUESTS)]
    sent = time.monotonic()
    for thread in threads:
        thread.start()
    wait_for(lambda: _metric(base_url, "queuechat:num_requests_waiting") == REQUESTS, timeout=20)
    time.sleep(max(WORKER_LATE_S - (time.monotonic() - sent), 0))
    assert not results and not cluster.live()
    cluster.start_worker("worker")
    for thread in threads:
        thread.join(55)
    assert sorted(results) == list(range(REQUESTS))
    for index, (status, text) in sorted(results.items()):
        assert status == 200, (index, text)
        if index % 2:
            assert text.rstrip().endswith("data: [DONE]"), text
        else:
            assert json.loads(text)["usage"]["completion_tokens"] > 0
    assert cluster.stats().get("completed") == REQUESTS
