"""queuechat against FastChat 0.2.36 on the same model directory, the same dtype and the same workload.

    python -m bench.vs_fastchat [--rounds 2] [--threads 2] [--dtype float32]

What it does, all on loopback:

1. Creates (once, reused later) a virtual environment for FastChat outside the repository, under
   ``~/.cache/queuechat/fastchat-venv``: ``fschat==0.2.36`` needs ``pydantic<2``, ``fastapi<0.100`` and
   ``transformers<4.50``, none of which can live beside queuechat's own dependencies.
2. Converts SmolLM2-135M-Instruct's GGUF file with *that* venv's transformers 4.x into one directory
   (``~/.cache/queuechat/vs-fastchat/smollm2-135m-instruct``), which both systems then load.
3. Starts FastChat's controller, model_worker and openai_api_server, and queuechat's worker and API (on an
   embedded Valkey, or the Redis at ``--redis-url`` under a key
   prefix of its own), each model worker with the same torch threads and dtype.
4. Runs the identical workload against both, alternating which goes first in each round: streaming
   ``/v1/completions``, ChatML-wrapped prompts, greedy, ``--max-tokens`` (64) per request, at 16 concurrent streams
   and at 1. Output tokens are the streamed text re-tokenised with the model's tokenizer, the same for both.
5. Prints medians over the rounds and the ratios: output tokens/s, p99 time to first token, and at 1 stream the
   time per output token (the time after the first token divided by the tokens after it).

FastChat runs as it comes (its model_worker's defaults, ``--limit-worker-concurrency 5``, ``stream_interval 2``);
queuechat runs with its worker's defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import redis_or_embedded, wait_serving
from bench.loadgen import RunResult, run_load
from bench.overhead import QUESTIONS

CACHE = Path(os.environ.get("QUEUECHAT_CACHE", "~/.cache/queuechat")).expanduser()
VENV = CACHE / "fastchat-venv"
MODEL_DIR = CACHE / "vs-fastchat" / "smollm2-135m-instruct"
MODEL_NAME = "smollm2"
# torch comes from the machine's local wheel (pip's find-links/constraints); the rest pins what fschat 0.2.36 needs.
FASTCHAT_PACKAGES = [
    "torch==2.13.0", "fschat==0.2.36", "pydantic<2", "fastapi<0.100", "transformers<4.50", "accelerate", "gguf",
    "sentencepiece", "protobuf", "shortuuid", "uvicorn", "httpx", "requests", "tiktoken", "nh3", "prompt_toolkit",
    "rich", "numpy<2.3",
]  # fmt: skip

CONVERT = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf_dir, gguf_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
model.save_pretrained(out)
tok.save_pretrained(out)
"""


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    marker = VENV / ".complete"
    if marker.exists():
        return
    print(f"creating FastChat's venv in {VENV} (once)…", file=sys.stderr, flush=True)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", *FASTCHAT_PACKAGES], check=True)
    marker.touch()


def ensure_model() -> Path:
    if (MODEL_DIR / "config.json").exists():
        return MODEL_DIR
    from workers.default_model import _downloaded_gguf, _installed_gguf

    gguf = _installed_gguf() or _downloaded_gguf()
    tmp = MODEL_DIR.with_name(MODEL_DIR.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {gguf.name} with FastChat's transformers into {MODEL_DIR} (once)…", file=sys.stderr)
    subprocess.run([str(venv_python()), "-c", CONVERT, str(gguf.parent), gguf.name, str(tmp)], check=True)
    tmp.rename(MODEL_DIR)
    return MODEL_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_model(base: str, procs: list[subprocess.Popen[bytes]], log: Path, timeout: float = 600) -> None:
    wait_serving(base, {MODEL_NAME}, procs, timeout, hint=f"; see {log}")


def start_fastchat(model_dir: Path, threads: int, dtype: str, log: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    controller, worker, api = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = str(threads)
    py = str(venv_python())
    out = open(log, "wb")  # noqa: SIM115  # lives as long as the processes
    controller_url = f"http://127.0.0.1:{controller}"
    commands = [
        ["fastchat.serve.controller", "--host", "127.0.0.1", "--port", str(controller)],
        ["fastchat.serve.model_worker", "--model-path", str(model_dir), "--model-names", MODEL_NAME,
         "--device", "cpu", "--dtype", dtype, "--host", "127.0.0.1", "--port", str(worker),
         "--worker-address", f"http://127.0.0.1:{worker}", "--controller-address", controller_url],
        ["fastchat.serve.openai_api_server", "--host", "127.0.0.1", "--port", str(api),
         "--controller-address", controller_url],
    ]  # fmt: skip
    procs = []
    for command in commands:
        # FastChat writes its own log files into its working directory: keep them beside ours, out of the repo
        procs.append(
            subprocess.Popen([py, "-m", *command], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        )
        if command[0].endswith("controller"):
            time.sleep(3)  # the worker registers with the controller as it starts
    base = f"http://127.0.0.1:{api}"
    wait_for_model(base, procs, log)
    return base, procs


def start_queuechat(
    model_dir: Path, threads: int, dtype: str, redis_url: str, log: Path, engine: str = "transformers"
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "QUEUECHAT_REDIS_URL": redis_url, "QUEUECHAT_KEY_PREFIX": f"vsfc{os.getpid()}"}
    env["OMP_NUM_THREADS"] = str(threads)
    out = open(log, "wb")  # noqa: SIM115  # lives as long as the processes
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workers", "--model-path", str(model_dir), "--model-names", MODEL_NAME,
             "--device", "cpu", "--dtype", dtype, "--num-threads", str(threads), "--log-level", "warning",
             "--engine", engine],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
            env={**env, "OMP_NUM_THREADS": "1"}, stdout=out, stderr=subprocess.STDOUT,
        ),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for_model(base, procs, log)
    return base, procs


def count_tokens(run: RunResult, tokenizer) -> None:
    """Output tokens as the model's tokenizer counts the streamed text: one rule for both systems."""
    for r in run.ok:
        r.tokens = len(tokenizer.encode("".join(r.text), add_special_tokens=False))


def time_per_output_token(run: RunResult) -> float:
    values = [
        (r.latency - r.ttft) / (r.tokens - 1) for r in run.ok if r.ttft is not None and r.tokens > 1
    ]  # fmt: skip
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each model worker")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--requests-at-1", type=int, default=4, help="requests per round at concurrency 1")
    parser.add_argument("--redis-url", default=None, help="default: an embedded Valkey of its own")
    parser.add_argument("--engine", default="transformers", help="queuechat's engine (vllm: run from a venv with it)")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers it started are stopped too
    ensure_venv()
    model_dir = ensure_model()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    redis_url, server = redis_or_embedded(args.redis_url)
    logs = Path(f"/tmp/queuechat-vs-fastchat-{os.getpid()}")
    logs.mkdir(exist_ok=True)
    fc_base, fc_procs = start_fastchat(model_dir, args.threads, args.dtype, logs / "fastchat.log")
    qc_base, qc_procs = start_queuechat(
        model_dir, args.threads, args.dtype, redis_url, logs / "queuechat.log", args.engine
    )
    systems = {"FastChat": fc_base, "queuechat": qc_base}
    try:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in QUESTIONS
        ]
        for base in systems.values():  # warm both
            asyncio.run(run_load(base, MODEL_NAME, texts[:2], 2, 8))
        print(
            f"SmolLM2-135M-Instruct {args.dtype}, CPU, {args.threads} torch threads per model worker, "
            f"/v1/completions streaming, {args.max_tokens} max tokens, greedy, {args.rounds} alternating rounds, "
            f"medians; model dir {model_dir}"
        )
        print(
            f"{'streams':>7} {'system':>10} {'requests':>8} {'tok/s':>8} {'TTFT p50 s':>10} {'TTFT p99 s':>10} "
            f"{'TPOT ms':>8} {'errors':>6}"
        )
        for conc in args.concurrency:
            prompts = [texts[i % len(texts)] for i in range(conc if conc > 1 else args.requests_at_1)]
            runs: dict[str, list[RunResult]] = {name: [] for name in systems}
            for round_no in range(args.rounds):
                order = list(systems) if round_no % 2 == 0 else list(reversed(systems))
                for name in order:
                    run = asyncio.run(run_load(systems[name], MODEL_NAME, prompts, conc, args.max_tokens))
                    count_tokens(run, tokenizer)
                    runs[name].append(run)
            rows = {}
            for name, rs in runs.items():
                tps = statistics.median(r.tokens_per_s for r in rs)
                p50 = statistics.median(r.ttft(0.5) for r in rs)
                p99 = statistics.median(r.ttft(0.99) for r in rs)
                tpot = statistics.median(time_per_output_token(r) for r in rs) * 1000
                errors = sum(r.errors for r in rs)
                rows[name] = (tps, p99, tpot)
                print(
                    f"{conc:>7} {name:>10} {len(prompts):>8} {tps:>8.1f} {p50:>10.3f} {p99:>10.3f} {tpot:>8.1f} "
                    f"{errors:>6}"
                )
            (fc_tps, fc_p99, fc_tpot), (qc_tps, qc_p99, qc_tpot) = rows["FastChat"], rows["queuechat"]
            print(
                f"{conc:>7} {'ratio':>10}   queuechat/FastChat tok/s {qc_tps / fc_tps:.2f}x; "
                f"p99 TTFT {qc_p99 / fc_p99:.3f} (1/{fc_p99 / qc_p99:.1f}); TPOT {qc_tpot / fc_tpot:.2f}"
            )
        sys.stdout.flush()
    finally:
        for p in fc_procs + qc_procs:
            p.terminate()
        for p in fc_procs + qc_procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
