"""``engine_kind`` over every engine: a module that imports it runs its tests against the transformers engine
and against the vLLM engine (skipped where vLLM is not installed; CI runs them in a second venv, see .ci/run)."""

from __future__ import annotations

import importlib.util

import pytest

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


ENGINE_PARAMS = [
    "transformers",
    pytest.param(
        "vllm",
        marks=[pytest.mark.vllm, pytest.mark.skipif(not VLLM_INSTALLED, reason="vLLM is not installed")],
    ),
]


@pytest.fixture(params=ENGINE_PARAMS)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
