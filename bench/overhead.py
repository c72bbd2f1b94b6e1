"""What the broker path costs: the same engine, with the same model, prompts and settings, driven in-process
and through API + Redis + worker, at concurrency 1, 16 and 64, in alternating rounds of one run.

    python -m bench.overhead [--rounds 3] [--max-tokens 64] [--threads 2] [--waves 2] [--stream-interval 1]

Prints throughput and TTFT for both paths and their ratios (end-to-end / in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.common import redis_or_embedded
from bench.loadgen import RunResult, run_load

QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "Why is the sky blue?",
    "Give me a synonym for happy.", "What is 12 times 12?", "Write a haiku about the sea.",
    "Who wrote Hamlet?", "What does a CPU do?", "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.", "What is photosynthesis?", "Name a prime number above 50.",
    "What is the boiling point of water?", "Suggest a name for a cat.", "What is Redis?", "Define gravity.",
]  # fmt: skip


def prompts(tokenizer, n: int) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], add_generation_prompt=True, tokenize=False
        )
        for i in range(n)
    ]


def run_inprocess(engine, tokenizer, texts: list[str], concurrency: int, max_tokens: int) -> RunResult:
    """Drive the engine directly: the same work the worker does, minus Redis, the API and HTTP."""
    from bench.loadgen import RequestResult
    from workers.engine import GenerationRequest

    results: dict[str, RequestResult] = {}
    started: dict[str, float] = {}
    pending = list(enumerate(texts))
    running: set[str] = set()
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < concurrency:
            i, text = pending.pop(0)
            sid = f"bench-{i}-{time.monotonic_ns()}"
            started[sid] = time.perf_counter()
            results[sid] = RequestResult()
            running.add(sid)
            engine.add(
                GenerationRequest(
                    seq_id=sid, prompt_ids=tokenizer.encode(text), max_new_tokens=max_tokens, temperature=0
                )
            )
        for update in engine.poll(timeout=0.05):
            now = time.perf_counter()
            r = results[update.seq_id]
            # counted like the worker's usage: every generated token, EOS included
            visible = [t for t in update.token_ids if t not in engine.eos_token_ids]
            if visible and r.ttft is None:
                r.ttft = now - started[update.seq_id]
            if visible:
                r.chunk_times.append(now)
            r.tokens += len(update.token_ids)
            if update.finished:
                r.latency = now - started[update.seq_id]
                running.discard(update.seq_id)
    return RunResult(wall=time.perf_counter() - start, requests=list(results.values()))


def start_system(
    model_dir: Path,
    redis_url: str,
    port: int,
    threads: int,
    log: Path,
    stream_interval: int = 1,
    extra_env: dict[str, str] | None = None,
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "QUEUECHAT_REDIS_URL": redis_url, "QUEUECHAT_KEY_PREFIX": f"bench{os.getpid()}-{port}"}
    env.update(extra_env or {})
    out = open(log, "wb")  # noqa: SIM115  # lives as long as the processes
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--model-path", str(model_dir), "--model-names", "bench",
         "--num-threads", str(threads), "--stream-interval", str(stream_interval), "--log-level", "warning"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()["data"]:
                return [worker, api]
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if worker.poll() is not None or api.poll() is not None:
            break
        time.sleep(0.5)
    for p in (worker, api):
        p.kill()
    raise SystemExit(f"the system did not come up; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--waves", type=int, default=2, help="requests per round = waves x concurrency (at least 4)")
    parser.add_argument("--stream-interval", type=int, default=1, help="the worker's --stream-interval")
    parser.add_argument("--redis-url", default=None, help="default: an embedded Valkey")
    parser.add_argument(
        "--also-env",
        metavar="KEY=VALUE",
        nargs="+",
        default=[],
        help="also run a second API+Redis system whose worker and API get this environment (an A/B of a setting)",
    )
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from workers.default_model import default_model_dir
    from workers.engines.transformers import ContinuousBatchingEngine, EngineConfig
    from workers.loading import load_model

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    model_dir = default_model_dir()
    loaded = load_model(model_dir, device="cpu")
    engine = ContinuousBatchingEngine(loaded.model, loaded.tokenizer, EngineConfig())
    redis_url, server = redis_or_embedded(args.redis_url)
    port = 18000 + os.getpid() % 1000
    log = Path(f"/tmp/queuechat-bench-{os.getpid()}.log")
    procs = start_system(model_dir, redis_url, port, args.threads, log, args.stream_interval)
    systems = {"API+Redis": f"http://127.0.0.1:{port}"}
    if args.also_env:
        extra = dict(item.split("=", 1) for item in args.also_env)
        procs += start_system(model_dir, redis_url, port + 1, args.threads, log, args.stream_interval, extra)
        systems["B"] = f"http://127.0.0.1:{port + 1}"
        print(f"B: API+Redis with {' '.join(args.also_env)}")
    try:
        # warm both paths
        run_inprocess(engine, loaded.tokenizer, prompts(loaded.tokenizer, 2), 2, 8)
        for url in systems.values():
            asyncio.run(run_load(url, "bench", prompts(loaded.tokenizer, 2), 2, 8))
        print(
            f"SmolLM2-135M-Instruct fp32, CPU, {args.threads} torch threads per engine, "
            f"{args.max_tokens} max tokens, greedy, {args.rounds} alternating rounds, worker --stream-interval "
            f"{args.stream_interval}; medians"
        )
        header = f"{'conc':>4} {'path':>10} {'tok/s':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'errors':>6}"
        print(header)
        for conc in args.concurrency:
            texts = prompts(loaded.tokenizer, max(conc * args.waves, 4))
            results: dict[str, list[RunResult]] = {"in-process": [], **{name: [] for name in systems}}
            for _ in range(args.rounds):
                results["in-process"].append(run_inprocess(engine, loaded.tokenizer, texts, conc, args.max_tokens))
                for name, url in systems.items():
                    results[name].append(asyncio.run(run_load(url, "bench", texts, conc, args.max_tokens)))
            rows = {}
            for name, runs in results.items():
                tps = statistics.median(r.tokens_per_s for r in runs)
                p50 = statistics.median(r.ttft(0.5) for r in runs) * 1000
                p99 = statistics.median(r.ttft(0.99) for r in runs) * 1000
                errors = sum(r.errors for r in runs)
                rows[name] = (tps, p50, p99)
                print(f"{conc:>4} {name:>10} {tps:>8.1f} {p50:>12.1f} {p99:>12.1f} {errors:>6}")
            t_in, p50_in, _ = rows["in-process"]
            for name in systems:
                t_e2e, p50_e2e, _ = rows[name]
                label = "ratio" if name == "API+Redis" else f"ratio {name}"
                print(f"{conc:>4} {label:>10} {t_e2e / t_in:>8.3f}   added TTFT p50: {p50_e2e - p50_in:+.1f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        engine.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
