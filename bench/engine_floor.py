"""How close the engine runs to its floor: the worker's batching engine decoding N sequences, against the model's
Linear layers alone (every projection of every layer and the output head, the model's own weights, N rows of
input) doing the same number of tokens, in alternating rounds of one run.

    python -m bench.engine_floor [--rounds 3] [--concurrency 16] [--max-tokens 64] [--threads 2]

The engine's rate can never pass the Linear layers' rate; the ratio says how much a perfect attention, sampler
and scheduler could still gain (at most 1/ratio). The engine's rate also carries the prompts' prefill and the steps
in which fewer sequences remain (answers end at their own length): the run prints how full the batch was.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def linear_tokens_per_s(model: torch.nn.Module, rows: int, steps: int) -> float:
    """Tokens per second of ``steps`` passes through every Linear layer, ``rows`` tokens each."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {n: torch.randn(rows, n) for n in {m.in_features for m in linears}}
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(steps):
            for layer in linears:
                layer(inputs[layer.in_features])
        return rows * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from bench.overhead import prompts, run_inprocess
    from workers.default_model import default_model_dir
    from workers.engines.transformers import ContinuousBatchingEngine, EngineConfig
    from workers.loading import load_model

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    loaded = load_model(default_model_dir(), device="cpu")
    engine = ContinuousBatchingEngine(loaded.model, loaded.tokenizer, EngineConfig())
    texts = prompts(loaded.tokenizer, args.concurrency)
    try:
        run_inprocess(engine, loaded.tokenizer, texts[:2], 2, 8)  # warm
        linear_tokens_per_s(loaded.model, args.concurrency, 2)
        engine_rates, floor_rates = [], []
        for _ in range(args.rounds):
            run = run_inprocess(engine, loaded.tokenizer, texts, args.concurrency, args.max_tokens)
            engine_rates.append(run.tokens_per_s)
            floor_rates.append(linear_tokens_per_s(loaded.model, args.concurrency, args.max_tokens // 2))
        lengths = sorted(r.tokens for r in run.requests)
    finally:
        engine.close()
    print(
        f"SmolLM2-135M-Instruct fp32, CPU, {args.threads} torch threads, {args.concurrency} sequences, "
        f"{args.max_tokens} max tokens, greedy, {args.rounds} alternating rounds"
    )
    for i, (e, f) in enumerate(zip(engine_rates, floor_rates, strict=True)):
        print(f"round {i + 1}: engine {e:.1f} tok/s, Linear layers alone {f:.1f} tok/s, ratio {e / f:.2f}")
    ratio = statistics.median(e / f for e, f in zip(engine_rates, floor_rates, strict=True))
    print(f"median ratio engine / Linear layers alone: {ratio:.2f} (a perfect rest of the step gains at most "
          f"{1 / ratio:.2f}x)")  # fmt: skip
    # the batch shrinks as answers end at their end-of-sequence token: the last steps run with few sequences
    print(f"tokens per sequence (last round): min {lengths[0]}, median {statistics.median(lengths):.0f}, "
          f"max {lengths[-1]}; mean batch occupancy {sum(lengths) / (lengths[-1] * len(lengths)):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
