"""A worker SIGKILLed under load loses no request: another worker takes its jobs over, continuing the streams that
already sent text, so every request, streaming or not, completes."""

from __future__ import annotations

import asyncio
import signal

from tests.engines import engine_kind  # noqa: F401  (these tests run on every engine)
from tests.faults.conftest import Cluster
from tests.faults.load import Load


async def test_sigkill_one_of_two_workers_under_load(cluster: Cluster) -> None:
    cluster.start_worker("worker-a")
    cluster.start_worker("worker-b")
    base_url = cluster.start_api()
    victim = cluster.wait_workers(2)[0]

    load = Load(base_url, max_tokens=384)
    requests = asyncio.create_task(load.run(streaming=16, plain=16))
    # Strike while both kinds of work are in flight: streams that already sent text, others still queued.
    while load.first_tokens < 4 and not requests.done():
        await asyncio.sleep(0.01)
    assert not requests.done(), "the load finished before the fault could be injected"
    cluster.worker_process(victim).send_signal(signal.SIGKILL)
    outcomes = await asyncio.wait_for(requests, timeout=240)

    silent = [o for o in outcomes if o.silent]
    plain_failed = [o for o in outcomes if not o.stream and not o.answered]
    lost_streams = [o for o in outcomes if o.stream and o.error]
    stats = cluster.stats()
    print(
        f"\nSIGKILL under load: {len(outcomes)} requests, answered {sum(o.answered for o in outcomes)}, "
        f"explicit errors {len(lost_streams)} ({sorted({str(o.error) for o in lost_streams})}), silent {len(silent)}; "
        f"jobs taken over {stats.get('reclaimed', 0)}"
    )
    assert silent == []
    assert plain_failed == []
    assert lost_streams == []
    assert stats.get("reclaimed", 0) >= 1, "the killed worker held no job: the fault tested nothing"
    assert len(cluster.live()) == 1
