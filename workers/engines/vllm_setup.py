"""Setting the vLLM engine up: its configuration from the worker's flags, vLLM's ``EngineArgs`` from it, the check of
the installed vLLM against the releases this backend was tested with, and the model's generation config (for its
sampling defaults). Driving the engine is :mod:`workers.engines.vllm`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# The vLLM releases this backend was tested with: [lowest, first untested). Others are used with a warning.
TESTED_VLLM = ((0, 32), (0, 33))


@dataclass
class VllmConfig:
    slots: int = 32
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    num_gpus: int = 1  # tensor parallel size
    quantization: str | None = None
    enforce_eager: bool = False
    prefix_caching: bool = True
    seed: int | None = None
    max_batch_tokens: int | None = None
    kv_cache_gib: float | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)  # the rest of vLLM's EngineArgs, by name


def parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    """``--engine-arg KEY=VALUE`` pairs as EngineArgs keywords: dashes become underscores, and a value that reads
    as JSON (a number, true/false, a list or object) is taken as such, else as a string."""
    import json

    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--engine-arg {pair!r}: expected KEY=VALUE")
        try:
            parsed[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip().replace("-", "_")] = value
    return parsed


def engine_args(model_dir: str, config: VllmConfig) -> Any:
    from vllm import EngineArgs

    kwargs: dict[str, Any] = {
        "model": model_dir,
        "tokenizer": model_dir,
        "dtype": config.dtype,
        "max_num_seqs": config.slots,
        "tensor_parallel_size": config.num_gpus,
        "enforce_eager": config.enforce_eager,
        "enable_prefix_caching": config.prefix_caching,
        "disable_log_stats": True,
        # JSON mode and JSON schemas arrive as llguidance grammars (workers/grammar.py), as for the other engine
        "structured_outputs_config": {"backend": "guidance"},
    }
    if config.seed is not None:
        kwargs["seed"] = config.seed
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    if config.quantization is not None:
        kwargs["quantization"] = config.quantization
    if config.max_batch_tokens is not None:
        kwargs["max_num_batched_tokens"] = config.max_batch_tokens
    if config.kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gib * 2**30)
    kwargs.update(config.engine_args)
    return EngineArgs(**kwargs)


def check_version() -> None:
    import vllm

    version = vllm.__version__
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        release = (0, 0)
    low, high = TESTED_VLLM
    if not low <= release < high:
        log.warning("vLLM %s is outside the range this engine was tested with (%s.%s to %s.%s)", version, *low, *high)


class ConfigHolder:
    """What ``sampling_defaults_of`` reads a generation config from (a model's ``generation_config``)."""

    def __init__(self, generation_config: Any) -> None:
        self.generation_config = generation_config


def generation_config(model_dir: str) -> Any:
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(model_dir)
    except Exception:  # a model without generation_config.json: OpenAI's defaults, the config's own EOS
        return None
