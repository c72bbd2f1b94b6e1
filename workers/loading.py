"""Load a causal LM and its tokenizer from a Hugging Face directory or a GGUF file, on the requested device.

GGUF files are converted once (dequantised) into a cache directory and loaded from there afterwards, so a
restart costs a plain safetensors load. Nothing here reaches a model hub: paths are local.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cache_dir() -> Path:
    root = os.environ.get("QUEUECHAT_CACHE_DIR") or Path.home() / ".cache" / "queuechat"
    return Path(root)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: torch.device
    path: Path


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "mps":
            return torch.float16
        return torch.float32  # bf16 matmuls are slower than fp32 on most CPUs without AMX
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}") from None


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors directory (model + tokenizer + chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s into %s (once; later starts load the converted copy)", gguf_file, out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)  # atomic: a half-written directory is never mistaken for a finished one
    return out_dir


def model_directory(model_path: str | Path) -> Path:
    """A loadable directory for ``model_path``: the directory itself, or the cached conversion of a GGUF file."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out = cache_dir() / "gguf" / f"{path.stem}-{digest}"
        if not out.is_dir():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(path, out)
        return out
    raise FileNotFoundError(f"--model-path {model_path}: no such model directory or .gguf file")


def load_model(
    model_path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    num_gpus: int = 1,
    max_gpu_memory: str | None = None,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = model_directory(model_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device == "cuda" and num_gpus > 1:
        # accelerate splits the layers over the GPUs; max_gpu_memory caps each one (FastChat's flag)
        kwargs["device_map"] = "auto"
        if max_gpu_memory:
            kwargs["max_memory"] = {i: max_gpu_memory for i in range(num_gpus)}
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    log.info("loaded %s on %s as %s", directory, model.device, torch_dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, device=model.device, path=directory)
