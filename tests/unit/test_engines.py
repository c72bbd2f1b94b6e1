"""Choosing and configuring an engine: ``--engine`` (``auto`` included) and ``--engine-arg KEY=VALUE``."""

from __future__ import annotations

import pytest

from workers.engines import resolve, vllm_installed
from workers.engines.vllm_setup import parse_engine_args


def test_a_named_engine_is_taken_as_named() -> None:
    assert resolve("transformers", "cuda") == "transformers"
    assert resolve("vllm", "cpu") == "vllm"


def test_auto_takes_vllm_where_it_runs_and_is_installed() -> None:
    expected = "vllm" if vllm_installed() else "transformers"
    assert resolve("auto", "cpu") == expected
    assert resolve("auto", "cuda") == expected
    assert resolve("auto", "mps") == "transformers"  # vLLM does not run on MPS


def test_an_unknown_engine_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'tensorrt'"):
        resolve("tensorrt", "cpu")


def test_engine_args_read_json_values_and_take_underscores() -> None:
    parsed = parse_engine_args(
        ["max-logprobs=50", "swap_space=0.5", "enable_chunked_prefill=false", "load_format=dummy"]
    )
    assert parsed == {"max_logprobs": 50, "swap_space": 0.5, "enable_chunked_prefill": False, "load_format": "dummy"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_engine_args(["no-equals-sign"])


def test_a_worker_without_vllm_says_how_to_get_it() -> None:
    if vllm_installed():
        pytest.skip("vLLM is installed here")
    from workers.engines import EngineOptions, build

    with pytest.raises(ValueError, match=r"queuechat\[vllm"):
        build("vllm", "/nonexistent", EngineOptions(device="cpu"))
