"""Noisy neighbour: tenant A sends 20x tenant B's rate at a one-worker model; B's TTFT p99 with A present over B
alone, with fair queuing (A and B have keys of their own) and without (A and B share one key, so their jobs wait
in one stream, first come first served).

    python -m bench.noisy [--rounds 3] [--seconds 8] [--b-rate 1] [--a-factor 20] [--max-tokens 8] [--slots 2]
                          [--model tiny|small]

One embedded Valkey, one API process and one worker (1 torch thread, ``--slots`` sequences) of a random Llama.
Each round measures, in an order that alternates between rounds: B alone, B with A under fair queuing, B with A
sharing B's key. B and A send open-loop (a request every 1/rate seconds, whatever the answers), each a streaming
completion of ``--max-tokens`` tokens; a phase ends when every request it sent has its answer (A's backlog drains
before the next phase). Prints, per round and as medians, B's TTFT p99 with A over B's alone, fair and not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import wait_serving
from bench.loadgen import RequestResult, RunResult, one_stream
from bench.scale import MODELS, PROMPT, start, stop, worker_args


async def open_loop(base: str, key: str, rate: float, seconds: float, max_tokens: int) -> RunResult:
    """``rate`` requests a second for ``seconds``, each sent on time whatever the earlier ones are doing."""
    count = max(int(rate * seconds), 1)
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits, headers=headers) as http:
        began = time.perf_counter()

        async def at(i: int) -> RequestResult:
            await asyncio.sleep(max(began + i / rate - time.perf_counter(), 0.0))
            return await one_stream(http, "tiny", PROMPT, max_tokens)

        results = await asyncio.gather(*(at(i) for i in range(count)))
        return RunResult(wall=time.perf_counter() - began, requests=list(results))


async def phase(
    base: str, b_key: str, a_key: str | None, args: argparse.Namespace
) -> tuple[RunResult, RunResult | None]:
    """B's requests (and A's at ``a_factor`` times B's rate, when ``a_key``), started together."""
    b = open_loop(base, b_key, args.b_rate, args.seconds, args.max_tokens)
    if a_key is None:
        return await b, None
    a = open_loop(base, a_key, args.b_rate * args.a_factor, args.seconds, args.max_tokens)
    b_run, a_run = await asyncio.gather(b, a)
    return b_run, a_run


def p99_ms(run: RunResult) -> float:
    return run.ttft(0.99) * 1000


def bench(args: argparse.Namespace, model_dir: Path, env: dict[str, str], logs: Path, redis_url: str) -> None:
    from broker.connection import sync_client
    from broker.keys import Keys
    from broker.tenants import TenantLimits, TenantStore

    port = 18000 + os.getpid() % 500
    base = f"http://127.0.0.1:{port}"
    blocks = 1024
    procs = [
        start(["api", "--port", str(port), "--log-level", "warning"], env, logs / "api.log"),
        start(worker_args(model_dir, "tiny", args.slots, blocks, 1), env, logs / "worker.log"),
    ]
    try:
        wait_serving(base, {"tiny"}, procs, 300)  # before the keys: then /v1/models needs one too
        store = TenantStore(sync_client(redis_url), Keys("qc"))
        secrets = {name: store.add(name, TenantLimits()) for name in ("tenant-a", "tenant-b", "shared")}
        time.sleep(2.5)  # the API's view of whether keys exist is cached that long
        asyncio.run(phase(base, secrets["tenant-b"], None, argparse.Namespace(**{**vars(args), "seconds": 2})))
        cases = {
            "alone": (secrets["tenant-b"], None),
            "fair": (secrets["tenant-b"], secrets["tenant-a"]),
            "shared": (secrets["shared"], secrets["shared"]),
        }
        p99: dict[str, list[float]] = {name: [] for name in cases}
        print(
            f"{MODELS[args.model]}, one worker (1 torch thread, {args.slots} slots), one API process; B sends "
            f"{args.b_rate:g}/s and A {args.b_rate * args.a_factor:g}/s for {args.seconds:g} s per phase, "
            f"{args.max_tokens} tokens each, streaming; {args.rounds} alternating rounds; {os.cpu_count()} cores"
        )
        for round_no in range(args.rounds):
            order = list(cases) if round_no % 2 == 0 else list(reversed(cases))
            line = []
            for name in order:
                b_key, a_key = cases[name]
                b_run, a_run = asyncio.run(phase(base, b_key, a_key, args))
                p99[name].append(p99_ms(b_run))
                errors = b_run.errors + (a_run.errors if a_run else 0)
                drained = f" A drained in {a_run.wall:.1f}s" if a_run else ""
                line.append(f"{name}: B p99 {p99[name][-1]:.0f} ms, errors {errors}{drained}")
                if args.verbose:
                    print(name, "B's TTFTs (ms):", [round((r.ttft or 0) * 1000) for r in b_run.requests])
                    failed = [r.error for r in b_run.requests + (a_run.requests if a_run else []) if r.error]
                    for error in sorted(set(failed))[:3]:
                        print("   error:", (error or "")[:300])
            fair, shared = p99["fair"][-1] / p99["alone"][-1], p99["shared"][-1] / p99["alone"][-1]
            print(f"round {round_no + 1}: " + "; ".join(line) + f" -> fair {fair:.2f}x, shared {shared:.2f}x")
        alone = statistics.median(p99["alone"])
        print(
            f"B's TTFT p99 with A / B alone (medians: alone {alone:.0f} ms): "
            f"fair queuing {statistics.median(p99['fair']) / alone:.2f}x, "
            f"one shared key (first come first served) {statistics.median(p99['shared']) / alone:.2f}x"
        )
    finally:
        stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each tenant sends, per phase")
    parser.add_argument("--b-rate", type=float, default=1.0, help="B's requests per second")
    parser.add_argument("--a-factor", type=float, default=20.0, help="A's rate over B's")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--slots", type=int, default=2, help="sequences the worker runs at once")
    parser.add_argument("--model", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--verbose", action="store_true", help="print each of B's TTFTs")
    args = parser.parse_args()

    from broker.embedded import EmbeddedValkey
    from tests.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="queuechat-noisy-") as tmp:
        if args.model == "small":
            model_dir = build_tiny_llama(Path(tmp) / "small", hidden_size=384, num_layers=6)
        else:
            model_dir = build_tiny_llama(Path(tmp) / "tiny")
        server = EmbeddedValkey()
        server.start()
        env = {**os.environ, "QUEUECHAT_REDIS_URL": server.url, "OMP_NUM_THREADS": "1", "QUEUECHAT_KEY_PREFIX": "qc"}
        logs = Path(tmp)
        try:
            bench(args, model_dir, env, logs, server.url)
        except BaseException:
            for log in logs.glob("*.log"):
                print(f"--- {log.name}\n{log.read_text()[-2000:]}", file=sys.stderr)
            raise
        finally:
            server.stop()


if __name__ == "__main__":
    main()
