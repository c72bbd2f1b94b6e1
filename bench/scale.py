"""Scaling figures: one worker against two workers of one model, and one API process holding many open streams.

    python -m bench.scale workers [--model tiny|smollm2] [--slots 64] [--rounds 3] [--concurrency 32]
                                  [--requests 96] [--max-tokens 64]
    python -m bench.scale streams [--streams 1000] [--max-tokens 16] [--stream-interval 1 4]

``workers``: three workers, each with 1 torch thread and ``--slots`` sequences at most, on one embedded Valkey
and one API: one serves the model name ``solo``, two serve ``pair``. Rounds alternate between the names with the
identical load, and the ratio of output tokens/s (pair / solo) is printed. With the tiny random Llama (2 layers,
64 wide) a step takes a millisecond, so the API's relaying, not the workers, is what limits on a small machine;
with SmolLM2-135M each worker needs a core of its own, and slots below the offered concurrency give both
systems the same batch per worker, so the ratio is the capacity a second worker adds.

``streams``: for each ``--stream-interval``, one worker (slots for every stream) and one API process; all the
streams are opened at once and held until they end. Prints errors, the API's peak RSS (VmHWM), and its CPU time
over the run (user + system, from /proc) divided by the output tokens it relayed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import wait_serving
from bench.loadgen import RunResult, run_load

MODELS = {
    "tiny": "tiny random Llama (2 layers, 64 wide)",
    "small": "small random Llama (6 layers, 384 wide)",
    "smollm2": "SmolLM2-135M-Instruct fp32",
}
PROMPT = "<|im_start|>user\nWhat do workers read from Redis streams?<|im_end|>\n<|im_start|>assistant\n"


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115  # lives as long as the process
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_models(base: str, names: set[str], procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> None:
    wait_serving(base, names, procs, timeout)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_args(model_dir: Path, names: str, slots: int, blocks: int | None, interval: int) -> list[str]:
    return [
        "workers", "--model-path", str(model_dir), "--model-names", names, "--device", "cpu", "--num-threads", "1",
        "--limit-worker-concurrency", str(slots), *(["--num-blocks", str(blocks)] if blocks else []),
        "--page-size", "16", "--stream-interval", str(interval), "--log-level", "warning",
    ]  # fmt: skip


def bench_workers(args: argparse.Namespace, model_dir: Path, env: dict[str, str], logs: Path) -> None:
    port = 18500 + os.getpid() % 500
    base = f"http://127.0.0.1:{port}"
    procs = [start(["api", "--port", str(port), "--log-level", "warning"], env, logs / "api.log")]
    blocks = None if args.model == "smollm2" else 1024  # SmolLM2: the worker sizes its cache itself
    interval = args.stream_interval[0]
    procs.append(start(worker_args(model_dir, "solo", args.slots, blocks, interval), env, logs / "solo.log"))
    procs += [
        start(worker_args(model_dir, "pair", args.slots, blocks, interval), env, logs / f"pair{i}.log")
        for i in range(2)
    ]
    try:
        wait_models(base, {"solo", "pair"}, procs)
        time.sleep(3)  # both pair workers registered and reading
        prompts = smollm2_prompts(model_dir, args.requests) if args.model == "smollm2" else [PROMPT] * args.requests
        for name in ("solo", "pair"):
            asyncio.run(run_load(base, name, prompts[:8], 8, 8))
        runs: dict[str, list[RunResult]] = {"solo": [], "pair": []}
        cores: dict[str, list[float]] = {"solo": [], "pair": []}  # the serving workers' CPU seconds per second
        serving = {"solo": procs[1:2], "pair": procs[2:]}
        for round_no in range(args.rounds):
            for name in ("solo", "pair") if round_no % 2 == 0 else ("pair", "solo"):
                before = sum(cpu_seconds(p.pid) for p in serving[name])
                run = asyncio.run(run_load(base, name, prompts, args.concurrency, args.max_tokens))
                cores[name].append((sum(cpu_seconds(p.pid) for p in serving[name]) - before) / run.wall)
                runs[name].append(run)
        print(
            f"{MODELS[args.model]}, 1 torch thread, {args.slots} slots and --stream-interval {interval} per "
            f"worker, {args.concurrency} concurrent streams, {args.requests} requests x "
            f"{args.max_tokens} tokens per round, {args.rounds} alternating rounds, medians; {os.cpu_count()} cores"
        )
        tps = {}
        for name, rs in runs.items():
            tps[name] = statistics.median(r.tokens_per_s for r in rs)
            errors = sum(r.errors for r in rs)
            p50 = statistics.median(r.ttft(0.5) for r in rs) * 1000
            used = statistics.median(cores[name])
            print(
                f"{name:>5} workers={1 if name == 'solo' else 2} tok/s={tps[name]:8.1f} TTFT p50={p50:7.1f} ms "
                f"errors={errors} worker cores busy={used:.2f} tok/s per busy core={tps[name] / used:.1f}"
            )
        solo = statistics.median(cores["solo"])
        ceiling = (os.cpu_count() or 1) / solo
        print(f"ratio two workers / one worker: {tps['pair'] / tps['solo']:.2f} (one worker kept {solo:.2f} "
              f"cores busy, so {os.cpu_count()} cores allow at most {ceiling:.2f})")  # fmt: skip
    finally:
        stop(procs)


def smollm2_prompts(model_dir: Path, n: int) -> list[str]:
    from transformers import AutoTokenizer

    from bench.overhead import prompts

    return prompts(AutoTokenizer.from_pretrained(str(model_dir)), n)


def bench_streams(args: argparse.Namespace, model_dir: Path, env: dict[str, str], logs: Path) -> None:
    print(
        f"tiny Llama, one worker (1 torch thread, {args.streams} slots), one API process, {args.streams} streams "
        f"opened at once, {args.max_tokens} tokens each"
    )
    for interval in args.stream_interval:
        port = 19000 + os.getpid() % 500
        base = f"http://127.0.0.1:{port}"
        api = start(["api", "--port", str(port), "--log-level", "warning"], env, logs / "api.log")
        blocks = args.streams * 4 + 64  # prompt (~20 tokens) + max tokens in pages of 16, with room to spare
        worker = start(worker_args(model_dir, "tiny", args.streams, blocks, interval), env, logs / "worker.log")
        try:
            wait_models(base, {"tiny"}, [api, worker])
            asyncio.run(run_load(base, "tiny", [PROMPT] * 8, 8, 4))
            cpu_before = cpu_seconds(api.pid)
            run = asyncio.run(run_load(base, "tiny", [PROMPT] * args.streams, args.streams, args.max_tokens))
            cpu = cpu_seconds(api.pid) - cpu_before
            errors = {r.error for r in run.requests if r.error}
            per_token_us = cpu / max(run.output_tokens, 1) * 1e6
            print(
                f"stream-interval {interval}: streams={len(run.requests)} errors={run.errors} "
                f"tokens={run.output_tokens} wall={run.wall:.1f}s TTFT p99={run.ttft(0.99):.2f}s "
                f"API peak RSS={peak_rss_mib(api.pid):.0f} MiB, API CPU={cpu:.2f}s, {per_token_us:.0f} us/token"
            )
            for error in list(errors)[:3]:
                print("   error:", error[:200])
        finally:
            stop([api, worker])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["workers", "streams"])
    parser.add_argument(
        "--model",
        choices=["tiny", "small", "smollm2"],
        default="tiny",
        help="workers: the model served (small: a random Llama of 6 layers, 384 wide, ~11M parameters)",
    )
    parser.add_argument("--slots", type=int, default=64, help="workers: sequences each worker runs at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: 64 (workers), 16 (streams)")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-interval", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    args.max_tokens = args.max_tokens or (64 if args.what == "workers" else 16)

    from broker.embedded import EmbeddedValkey
    from tests.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="queuechat-scale-") as tmp:
        if args.what == "workers" and args.model == "smollm2":
            from workers.default_model import default_model_dir

            model_dir = default_model_dir()
        elif args.what == "workers" and args.model == "small":
            model_dir = build_tiny_llama(Path(tmp) / "small", hidden_size=384, num_layers=6)
        else:
            model_dir = build_tiny_llama(Path(tmp) / "tiny")
        server = EmbeddedValkey()
        server.start()
        env = {**os.environ, "QUEUECHAT_REDIS_URL": server.url, "OMP_NUM_THREADS": "1"}
        logs = Path(tmp)
        try:
            if args.what == "workers":
                bench_workers(args, model_dir, env, logs)
            else:
                bench_streams(args, model_dir, env, logs)
        except BaseException:
            for log in logs.glob("*.log"):
                print(f"--- {log.name}\n{log.read_text()[-2000:]}", file=sys.stderr)
            raise
        finally:
            server.stop()


if __name__ == "__main__":
    main()
