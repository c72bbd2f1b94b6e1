"""``python -m tests.faults.hooked_worker``: the model worker (``python -m workers``, same flags) with faults the
fault suite injects from outside the code under test. Test-only: nothing in the shipped packages reads these.

- ``QCTEST_CRASH_MARK``: a job whose request contains this text kills its worker (SIGKILL, as the OOM killer
  does) when the worker starts it.
- ``QCTEST_WEDGE_FILE``: once this file exists, the model's forward pass blocks forever while the process lives,
  as a stuck kernel or a deadlock would.
- ``QCTEST_FAIL_ADMISSION_PUBLISH``: the Nth publish that carries a job's ``accepted`` event fails once with a
  connection error before anything is sent, as when the worker's connection drops at that moment.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


def _crash_on(mark: str) -> None:
    from workers.service import ModelWorker

    start = ModelWorker._start

    def start_or_die(self: ModelWorker, delivery: Any, past: Any = None) -> Any:
        if mark in delivery.job.model_dump_json():
            os.kill(os.getpid(), signal.SIGKILL)
        return start(self, delivery, past)

    ModelWorker._start = start_or_die  # type: ignore[method-assign]


def _wedge_when(path: str) -> None:
    from transformers import LlamaForCausalLM

    forward = LlamaForCausalLM.forward
    never = threading.Event()

    def forward_or_block(self: Any, *args: Any, **kwargs: Any) -> Any:
        if os.path.exists(path):
            never.wait()
        return forward(self, *args, **kwargs)

    LlamaForCausalLM.forward = forward_or_block  # type: ignore[method-assign]


def _fail_admission_publish(nth: int) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from broker.consumer import JobConsumer
    from broker.schemas import Accepted

    publish = JobConsumer.publish
    seen = 0

    def publish_or_fail(self: JobConsumer, events: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        if any(isinstance(event, Accepted) for _, event in events):
            seen += 1
            if seen == nth:
                raise RedisConnectionError("injected: the connection dropped during this publish")
        return publish(self, events, *args, **kwargs)

    JobConsumer.publish = publish_or_fail  # type: ignore[method-assign]


def main() -> None:
    if mark := os.environ.get("QCTEST_CRASH_MARK"):
        _crash_on(mark)
    if path := os.environ.get("QCTEST_WEDGE_FILE"):
        _wedge_when(path)
    if nth := os.environ.get("QCTEST_FAIL_ADMISSION_PUBLISH"):
        _fail_admission_publish(int(nth))
    from workers.main import main as worker_main

    worker_main()


if __name__ == "__main__":
    main()
