"""vLLM's benchmark clients, unchanged, against the stack: guidellm (which always sends
``stream_options.continuous_usage_stats`` and ``ignore_eos``) and aiperf (with its suggested ``--extra-inputs
ignore_eos:true``) run a few dozen requests with the tiny model, and every request must succeed.

Both tools pin versions of huggingface_hub, pandas and rich older than queuechat's own, so they live in a venv of
their own: QUEUECHAT_LOADGEN_BIN names its bin folder (made with ``python -m venv VENV && VENV/bin/pip install
torch==2.13.0 guidellm==0.8.1 aiperf==0.13.0``, the CPU torch first on a machine without a GPU; CI makes it);
without it, or a tool that is not there, the test is skipped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Stack

BIN = Path(os.environ["QUEUECHAT_LOADGEN_BIN"]) if os.environ.get("QUEUECHAT_LOADGEN_BIN") else None
REQUESTS = 24


def tool(name: str) -> Path:
    if BIN is None:
        pytest.skip("QUEUECHAT_LOADGEN_BIN is not set (see this module's docstring)")
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (see this module's docstring)")
    return path


def run(command: list[str], cwd: Path, offline: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "TERM": "dumb"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:  # aiperf's offline mode looks a tokenizer up in the hub's cache only, never at a local path
        env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=420, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_guidellm_requests_all_succeed(stack: Stack, tiny_model_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "guidellm.json"
    run(
        [
            str(tool("guidellm")),
            "run",
            "--backend", f"kind=openai_http,target={stack.base_url},model=tiny",
            "--profile", "kind=concurrent,streams=4",
            "--constraint", f"kind=max_requests,count={REQUESTS}",
            "--tokenizer", f"kind=huggingface_auto,model={tiny_model_dir}",
            "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=16",
            "--output", f"kind=json,path={report}",
            "--disable-console-interactive",
        ],
        tmp_path,
    )  # fmt: skip
    benchmarks = json.loads(report.read_text())["benchmarks"]
    totals = benchmarks[0]["metrics"]["request_totals"]
    assert totals["errored"] == 0 and totals["incomplete"] == 0, totals
    assert totals["successful"] >= REQUESTS, totals


def test_aiperf_requests_all_succeed(stack: Stack, tiny_model_dir: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "aiperf"
    run(
        [
            str(tool("aiperf")),
            "profile",
            "--model", "tiny",
            "--url", stack.base_url,
            "--endpoint-type", "chat",
            "--streaming",
            "--tokenizer", str(tiny_model_dir),
            "--request-count", str(REQUESTS),
            "--concurrency", "4",
            "--synthetic-input-tokens-mean", "32",
            "--output-tokens-mean", "16",
            "--extra-inputs", "ignore_eos:true",
            "--artifact-dir", str(artifacts),
            "--ui-type", "none",
        ],
        tmp_path,
        offline=False,
    )  # fmt: skip
    exported = json.loads(next(artifacts.rglob("profile_export_aiperf.json")).read_text())
    assert exported["request_count"]["avg"] == REQUESTS, exported.get("request_count")
    assert not exported.get("error_summary"), exported["error_summary"]
