"""What the per-job event log costs and what failover takes, side by side in one run.

    python -m bench.durable [--rounds 2] [--max-tokens 64] [--threads 2] [--concurrency 16 64] [--failover]

1. Two API + worker systems on one Redis, the same model and prompts: the event log on (the default) and off
   (``QUEUECHAT_EVENT_LOG=false``), in alternating rounds: output tok/s and TTFT at each concurrency, and their
   ratios (on / off).
2. Redis memory of the logs: MEMORY USAGE of the logs the last round left (within their retention), per log and
   per 1,000 streams of that many tokens.
3. With ``--failover``: two workers behind one API with the default heartbeats (2 s interval, 6 s TTL); one is
   SIGKILLed while it streams, and for each of its streams the time from the kill to the next token the client
   receives (the goal: at most two heartbeat TTLs plus one prefill).
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

import httpx

from bench.common import redis_or_embedded, wait_serving
from bench.loadgen import RunResult, run_load
from bench.overhead import QUESTIONS, start_system


def prompts(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(n)]


def log_memory_of(redis_url: str, prefix: str) -> tuple[int, int]:
    from broker.connection import sync_client
    from broker.keys import Keys
    from broker.monitor import log_memory

    return log_memory(sync_client(redis_url), Keys(prefix), sample=10_000)


def compare(args: argparse.Namespace, model_dir: Path, redis_url: str) -> None:
    port = 19000 + os.getpid() % 500
    log = Path(f"/tmp/queuechat-bench-durable-{os.getpid()}.log")
    procs = start_system(model_dir, redis_url, port, args.threads, log, 1, {"QUEUECHAT_EVENT_LOG": "true"})
    procs += start_system(model_dir, redis_url, port + 1, args.threads, log, 1, {"QUEUECHAT_EVENT_LOG": "false"})
    systems = {"log on": f"http://127.0.0.1:{port}", "log off": f"http://127.0.0.1:{port + 1}"}
    try:
        for url in systems.values():
            asyncio.run(run_load(url, "bench", prompts(2), 2, 8))
        print(
            f"{args.threads} torch threads per worker, {args.max_tokens} max tokens, greedy, {args.rounds} "
            "alternating rounds; medians"
        )
        print(f"{'conc':>4} {'path':>8} {'tok/s':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'errors':>6}")
        for conc in args.concurrency:
            texts = prompts(max(conc * args.waves, 4))
            results: dict[str, list[RunResult]] = {name: [] for name in systems}
            for _ in range(args.rounds):
                for name, url in systems.items():
                    results[name].append(asyncio.run(run_load(url, "bench", texts, conc, args.max_tokens)))
            rows = {}
            for name, runs in results.items():
                tps = statistics.median(r.tokens_per_s for r in runs)
                p50 = statistics.median(r.ttft(0.5) for r in runs) * 1000
                p99 = statistics.median(r.ttft(0.99) for r in runs) * 1000
                rows[name] = (tps, p50)
                print(f"{conc:>4} {name:>8} {tps:>8.1f} {p50:>12.1f} {p99:>12.1f} {sum(r.errors for r in runs):>6}")
            (t_on, p_on), (t_off, p_off) = rows["log on"], rows["log off"]
            print(f"{conc:>4} {'on/off':>8} {t_on / t_off:>8.3f}   TTFT p50 on - off: {p_on - p_off:+.1f} ms")
        logs, size = log_memory_of(redis_url, f"bench{os.getpid()}-{port}")
        if logs:
            print(
                f"event logs left by the runs: {logs}, {size / logs / 1024:.1f} KiB each "
                f"({args.max_tokens} tokens, one event a token): {size / logs * 1000 / 2**20:.1f} MiB per 1,000 streams"
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


async def _watch(http: httpx.AsyncClient, text: str, max_tokens: int, arrivals: list[float]) -> None:
    body = {"model": "bench", "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())


def failover(args: argparse.Namespace, model_dir: Path, redis_url: str) -> None:
    port = 19500 + os.getpid() % 400
    prefix = f"benchfail{os.getpid()}"
    env = {**os.environ, "QUEUECHAT_REDIS_URL": redis_url, "QUEUECHAT_KEY_PREFIX": prefix}
    out = open(f"/tmp/queuechat-bench-failover-{os.getpid()}.log", "wb")  # noqa: SIM115
    worker_args = [sys.executable, "-m", "workers", "--model-path", str(model_dir), "--model-names", "bench",
                   "--num-threads", "1", "--log-level", "warning"]  # fmt: skip
    workers = [subprocess.Popen(worker_args, env=env, stdout=out, stderr=subprocess.STDOUT) for _ in range(2)]
    api = subprocess.Popen(
        [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    procs = [*workers, api]
    try:
        base = f"http://127.0.0.1:{port}"
        wait_serving(base, {"bench"}, procs, 300)
        from broker.connection import sync_client
        from broker.keys import Keys
        from broker.registry import live_workers

        client, keys = sync_client(redis_url), Keys(prefix)
        while len(live_workers(client, keys)) < 2:
            time.sleep(0.2)

        async def run() -> list[float]:
            async with httpx.AsyncClient(base_url=base, timeout=300) as http:
                arrivals: list[list[float]] = [[] for _ in range(args.failover_streams)]
                tasks = [
                    asyncio.create_task(_watch(http, t, args.failover_tokens, a))
                    for t, a in zip(prompts(args.failover_streams), arrivals, strict=True)
                ]
                while sum(bool(a) for a in arrivals) < len(arrivals):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                busy = max(live_workers(client, keys), key=lambda w: w.status.running)
                victim = next(p for p in workers if p.pid == busy.card.pid)
                killed_at = time.monotonic()
                victim.send_signal(signal.SIGKILL)
                await asyncio.gather(*tasks)
            gaps = []
            for times in arrivals:
                after = [t for t in times if t > killed_at]
                before = [t for t in times if t <= killed_at]
                # a stream of the victim: its first token after the kill came late
                if after and before and after[0] - killed_at > 1.0:
                    gaps.append(after[0] - killed_at)
            return gaps

        gaps = asyncio.run(run())
        if gaps:
            print(
                f"worker SIGKILLed with {args.failover_streams} streams: {len(gaps)} were its; death to next token "
                f"median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s (heartbeat TTL 6 s)"
            )
        else:
            print("worker SIGKILLed: none of the streams stalled (the victim held none)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--waves", type=int, default=2, help="requests per round = waves x concurrency")
    parser.add_argument("--redis-url", default=None, help="default: an embedded Valkey")
    parser.add_argument("--failover", action="store_true", help="also measure death to next token")
    parser.add_argument("--failover-streams", type=int, default=8)
    parser.add_argument("--failover-tokens", type=int, default=400)
    parser.add_argument("--model-path", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args()
    # a SIGTERM (timeout, Ctrl-C's cousin) still stops the systems this run started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from workers.default_model import default_model_dir

    model_dir = Path(args.model_path) if args.model_path else default_model_dir()
    redis_url, server = redis_or_embedded(args.redis_url)
    try:
        if not args.skip_compare:
            compare(args, model_dir, redis_url)
        if args.failover:
            failover(args, model_dir, redis_url)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
