"""``python -m tests.faults.hooked_worker``: the model worker (``python -m workers``, same flags) with faults the
fault suite injects from outside the code under test. Test-only: nothing in the shipped packages reads these.

- ``QCTEST_CRASH_MARK``: a job whose request contains this text kills its worker (SIGKILL, as the OOM killer
  does) when the worker starts it.
- ``QCTEST_WEDGE_FILE``: once this file exists, the model's forward pass blocks forever while the process lives,
  as a stuck kernel or a deadlock would.
- ``QCTEST_ENGINE_FAIL_FILE`` (vLLM engine): once this file exists, the model's forward pass raises, as a device
  error (an illegal memory access, a lost GPU) does: vLLM's step fails.
- ``QCTEST_OOM_FILE`` (vLLM engine): once this file exists, the next forward pass raises torch's OutOfMemoryError,
  as CUDA does when a batch does not fit, and removes the file (one step runs out of memory).
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


def _vllm_forward_raises(path: str, error: Any, once: bool) -> None:
    """vLLM's Llama forward raises ``error()`` while ``path`` exists (``once``: the first time, removing it)."""
    from vllm.model_executor.models.llama import LlamaForCausalLM

    forward = LlamaForCausalLM.forward

    def forward_or_raise(self: Any, *args: Any, **kwargs: Any) -> Any:
        if os.path.exists(path):
            if once:
                os.remove(path)
            raise error()
        return forward(self, *args, **kwargs)

    LlamaForCausalLM.forward = forward_or_raise  # vLLM's class: untyped where vLLM is not installed


def _device_error() -> Exception:
    return RuntimeError("CUDA error: an illegal memory access was encountered (test fault)")


def _out_of_memory() -> Exception:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test fault)")


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
    if path := os.environ.get("QCTEST_ENGINE_FAIL_FILE"):
        _vllm_forward_raises(path, _device_error, once=False)
    if path := os.environ.get("QCTEST_OOM_FILE"):
        _vllm_forward_raises(path, _out_of_memory, once=True)
    if nth := os.environ.get("QCTEST_FAIL_ADMISSION_PUBLISH"):
        _fail_admission_publish(int(nth))
    from workers.main import main as worker_main

    worker_main()


if __name__ == "__main__":
    main()
