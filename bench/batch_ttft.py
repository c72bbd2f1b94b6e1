"""What a running batch costs interactive users: time to first token of interactive streaming requests on an idle
system, while a batch keeps every slot of the worker busy, and (for contrast) while the same load arrives as
ordinary interactive requests, i.e. without the batch stream's lower priority. Alternating rounds of one run.

    python -m bench.batch_ttft [--rounds 3] [--probes 8] [--slots 8] [--batch-tokens 48]

Prints TTFT p50/p90 of each arm and its ratio to the idle system's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

from bench.common import redis_or_embedded
from bench.loadgen import one_stream, quantile
from bench.overhead import QUESTIONS

MODEL = "bench"


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


Procs = list[subprocess.Popen[bytes]]


def start_system(args: argparse.Namespace, redis_url: str, files: Path, log: Path) -> tuple[Procs, str]:
    env = {
        **os.environ,
        "QUEUECHAT_REDIS_URL": redis_url,
        "QUEUECHAT_KEY_PREFIX": f"benchbatch{os.getpid()}",
        "QUEUECHAT_FILES_DIR": str(files),
        "QUEUECHAT_BATCH_QUEUE": f"queuechat-batch-bench{os.getpid()}",
        "QUEUECHAT_BATCH_MAX_IN_FLIGHT": str(args.slots + args.waiting),
    }
    worker = ["-m", "workers", "--model-names", MODEL, "--num-threads", str(args.threads),
              "--limit-worker-concurrency", str(args.slots), "--log-level", "warning"]  # fmt: skip
    if args.model_path:
        worker += ["--model-path", args.model_path]
    port = 19000 + os.getpid() % 1000
    procs = [
        spawn(worker, env, log),
        spawn(["-m", "api", "--port", str(port), "--log-level", "warning"], env, log),
        spawn(["-m", "queuechat", "batch-worker", "--log-level", "warning"], env, log),
    ]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).json()["data"]:
                return procs, base
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    for p in procs:
        p.kill()
    raise SystemExit(f"the system did not come up; see {log}")


def prompt(i: int) -> str:
    """A question in SmolLM2's chat format, so the answer starts with text at once."""
    return f"<|im_start|>user\n{QUESTIONS[i % len(QUESTIONS)]}<|im_end|>\n<|im_start|>assistant\n"


async def probe(base: str, n: int, max_tokens: int) -> list[float]:
    """``n`` interactive streaming requests one after another; their TTFTs in seconds."""
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        out = []
        for i in range(n):
            result = await one_stream(http, MODEL, prompt(i), max_tokens)
            if result.error or result.ttft is None:
                raise SystemExit(f"probe failed: {result.error}")
            out.append(result.ttft)
        return out


async def probe_under_interactive_load(base: str, args: argparse.Namespace) -> list[float]:
    """The batch's load sent as ordinary interactive requests (as many in flight as the batch keeps)."""
    stop = asyncio.Event()

    async def background(http: httpx.AsyncClient, k: int) -> None:
        while not stop.is_set():
            await one_stream(http, MODEL, prompt(k), args.batch_tokens)

    limits = httpx.Limits(max_connections=args.slots + args.waiting + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        tasks = [asyncio.create_task(background(http, k)) for k in range(args.slots + args.waiting)]
        await asyncio.sleep(args.warmup)
        try:
            return await probe(base, args.probes, args.probe_tokens)
        finally:
            stop.set()
            for task in tasks:  # a dropped stream is cancelled by the worker within a token
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def probe_during_batch(client: OpenAI, base: str, args: argparse.Namespace) -> list[float]:
    lines = b"".join(
        json.dumps(
            {"custom_id": f"l{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": MODEL, "prompt": prompt(i), "max_tokens": args.batch_tokens, "temperature": 0}}
        ).encode() + b"\n"
        for i in range(args.batch_lines)
    )  # fmt: skip
    file_id = client.files.create(file=("bench.jsonl", io.BytesIO(lines)), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h")
    time.sleep(args.warmup)  # every slot taken by batch lines, more of them waiting in the batch stream
    if client.batches.retrieve(batch.id).status != "in_progress":
        raise SystemExit("the batch is not running: make it longer (--batch-lines)")
    try:
        return asyncio.run(probe(base, args.probes, args.probe_tokens))
    finally:
        still = client.batches.retrieve(batch.id)
        if still.status != "in_progress":
            print(f"warning: the batch was {still.status} before the probes ended; lengthen it", file=sys.stderr)
        client.batches.cancel(batch.id)
        while client.batches.retrieve(batch.id).status not in {"cancelled", "completed"}:
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=8, help="interactive requests per arm and round")
    parser.add_argument("--probe-tokens", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8, help="the worker's --limit-worker-concurrency")
    parser.add_argument("--waiting", type=int, default=4, help="batch lines queued beyond the slots")
    parser.add_argument("--batch-lines", type=int, default=2000)
    parser.add_argument("--batch-tokens", type=int, default=48)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before probing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-path", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--redis-url", default=None, help="default: an embedded Valkey")
    args = parser.parse_args()

    redis_url, server = redis_or_embedded(args.redis_url)
    with tempfile.TemporaryDirectory(prefix="queuechat-bench-files-") as files:
        log = Path(f"/tmp/queuechat-bench-batch-{os.getpid()}.log")
        procs, base = start_system(args, redis_url, Path(files), log)
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
        try:
            asyncio.run(probe(base, 2, args.probe_tokens))  # warm up
            arms: dict[str, list[float]] = {"idle": [], "during a batch": [], "same load, interactive": []}
            for round_ in range(1, args.rounds + 1):
                arms["idle"] += asyncio.run(probe(base, args.probes, args.probe_tokens))
                arms["during a batch"] += probe_during_batch(client, base, args)
                arms["same load, interactive"] += asyncio.run(probe_under_interactive_load(base, args))
                medians = ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in arms.items())
                print(f"after round {round_}: TTFT p50 {medians}", flush=True)
            print(
                f"{args.model_path or 'SmolLM2-135M-Instruct'}, CPU, {args.threads} torch threads, {args.slots} slots; "
                f"batch lines and background requests: {args.batch_tokens} tokens, "
                f"{args.slots + args.waiting} in flight; "
                f"probes: {args.probe_tokens}-token streaming /v1/completions, one at a time, "
                f"{args.probes} per arm x {args.rounds} alternating rounds"
            )
            print(f"{'arm':>24} {'n':>4} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'p50 / idle':>11}")
            idle_p50 = statistics.median(arms["idle"])
            for name, values in arms.items():
                p50 = statistics.median(values)
                p90 = quantile(sorted(values), 0.9)
                print(f"{name:>24} {len(values):>4} {p50 * 1000:>12.1f} {p90 * 1000:>12.1f} {p50 / idle_p50:>11.2f}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
