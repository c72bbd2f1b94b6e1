"""vLLM's outputs in the worker's terms: a step's ``RequestOutput`` as a :class:`~workers.engine.SeqUpdate`, its
{token id: Logprob} maps as logprobs and ranked alternatives, and the KV cache's used share for metrics. Plain
attribute reads of vLLM's objects, so this module imports without vLLM. Driving the engine is
:mod:`workers.engines.vllm`."""

from __future__ import annotations

from typing import Any

from workers.engine import SeqUpdate


def update_of(output: Any, wanted: int) -> SeqUpdate:
    """One generation request's step output (a DELTA of token ids) as a SeqUpdate, with ``wanted`` alternatives
    per token where it asked for logprobs."""
    completion = output.outputs[0]
    tokens = list(completion.token_ids)
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    if completion.logprobs is not None:
        pairs = [token_logprobs(t, p, wanted) for t, p in zip(tokens, completion.logprobs, strict=False)]
        logprobs = [chosen if chosen is not None else float("nan") for chosen, _ in pairs]
        top = [alternatives for _, alternatives in pairs]
    return SeqUpdate(
        seq_id=output.request_id,
        token_ids=tokens,
        logprobs=logprobs,
        top_logprobs=top,
        finished=output.finished,
        cached_tokens=getattr(output, "num_cached_tokens", None),  # the prefix cache's share of the prompt
    )


def token_logprobs(token: int, position: Any, top: int) -> tuple[float | None, list[tuple[int, float]]]:
    """(the token's logprob, the ``top`` likeliest alternatives best first) from vLLM's {token id: Logprob}."""
    if not position:
        return None, []
    chosen = position.get(token)
    ranked = sorted(
        ((lp.rank, tid, lp.logprob) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top),
    )
    return (float(chosen.logprob) if chosen is not None else None), [(tid, float(lp)) for _, tid, lp in ranked]


def kv_usage_of(engine: Any) -> float | None:
    """The used fraction of the KV cache, from the scheduler of vLLM's engine core in this process (LLMEngine's
    InprocClient holds it as ``engine_core``); None where it lives in another process."""
    core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
    usage = getattr(getattr(core, "scheduler", None), "get_kv_cache_usage", None)
    if not callable(usage):
        return None
    try:
        return max(0.0, min(1.0, float(usage())))
    except Exception:  # a metric is not worth a failed step
        return None
