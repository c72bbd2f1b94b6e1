"""``python -m tests.faults.hooked_worker``: the model worker (``python -m workers``, same flags) with faults the
fault suite injects from outside the code under test. Test-only: nothing in the shipped packages reads these.

- ``QCTEST_CRASH_MARK``: a job whose request contains this text kills its worker (SIGKILL, as the OOM killer
  does) when the worker starts it.
- ``QCTEST_WEDGE_FILE``: once this file exists, the model's forward pass blocks forever while the process lives,
  as a stuck kernel or a deadlock would.
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


def main() -> None:
    if mark := os.environ.get("QCTEST_CRASH_MARK"):
        _crash_on(mark)
    if path := os.environ.get("QCTEST_WEDGE_FILE"):
        _wedge_when(path)
    from workers.main import main as worker_main

    worker_main()


if __name__ == "__main__":
    main()
