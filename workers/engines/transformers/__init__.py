"""The transformers engine: transformers' continuous-batching manager behind the worker's engine interface.

New sequences join between decode steps, finished and cancelled ones leave at once, and each keeps its own paged KV
cache. The manager's sharp edges (see ENGINE-NOTES.md) are handled here: the KV cache is sized explicitly, a
request that cannot fit is refused before it reaches the manager, temperature 0 becomes top-k 1, and a dead
generation loop is rebuilt after failing only the sequences that were in it.

Everything in this package touches transformers' private internals (the paged cache and attention in
``attention``, the manager's logits-processor chain in ``processors`` and ``sampling``), so it is imported only
when a worker builds this engine, and the CPU decode fast path (``attention``) is installed only for the
transformers releases it was tested with (:data:`TESTED_TRANSFORMERS`); outside them the engine runs on
transformers' own code and says so once in the log.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from workers.engine import (
    GREEDY_TEMPERATURE,
    Engine,
    GenerationRequest,
    SamplingDefaults,
    SeqUpdate,
    eos_ids_of,
    sampling_defaults_of,
)
from workers.engines.transformers import prefix, processors, sampling

__all__ = [
    "GREEDY_TEMPERATURE",
    "ContinuousBatchingEngine",
    "Engine",
    "EngineConfig",
    "GenerationRequest",
    "SamplingDefaults",
    "SeqUpdate",
    "fast_path_status",
]

log = logging.getLogger(__name__)

# On CPU the cache is attended through a dense mask as wide as the cache: 32k tokens x 512 batch tokens = 64 MiB.
CPU_MAX_CACHE_TOKENS = 32_768
# The transformers releases the CPU decode fast path was tested with: [lowest, first untested). On 5.19 (what
# vLLM 0.32 pins) the paged cache hands its update's keyword arguments to the attention differently and the fused
# decode read breaks a step's attention, so there the engine runs on transformers' own attention.
TESTED_TRANSFORMERS = ((5, 20), (5, 25))


def _release(version: str) -> tuple[int, int]:
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])
    return major, minor


def fast_path_status(model: Any, installed: str = transformers.__version__) -> tuple[bool, str]:
    """Whether the CPU decode fast path (workers/engines/transformers/attention.py) applies to ``model`` with the
    ``installed`` transformers, and why."""
    low, high = TESTED_TRANSFORMERS
    if not low <= _release(installed) < high:
        tested = f"{low[0]}.{low[1]}-{high[0]}.{high[1] - 1}"
        return False, f"transformers {installed} is outside the tested range {tested}"
    if model.device.type != "cpu":
        return False, f"the model is on {model.device.type}, not the CPU"
    implementation = model.config._attn_implementation
    if implementation != "sdpa":
        return False, f"the model's attention is {implementation}, not sdpa"
    return True, f"transformers {installed}, sdpa on the CPU"


_fast_path_logged = False


def _install_fast_path(model: Any) -> bool:
    global _fast_path_logged
    on, why = fast_path_status(model)
    if on:
        from workers.engines.transformers import attention

        attention.install()  # decode steps attend per sequence, not across the whole batch
    if not _fast_path_logged:
        _fast_path_logged = True
        log.info("CPU decode fast path %s: %s", "on" if on else "off", why)
    return on


@dataclass
class EngineConfig:
    slots: int = 32
    page_size: int = 16
    num_blocks: int | None = None
    kv_cache_gib: float = 1.0
    max_batch_tokens: int = 512
    seed: int | None = None
    prefix_caching: bool = True


def kv_bytes_per_token(model: Any) -> int:
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(2 * cfg.num_hidden_layers * heads * head_dim * model.dtype.itemsize)


class ContinuousBatchingEngine:
    """Runs transformers' ``ContinuousBatchingManager`` in its own background thread."""

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = eos_ids_of(getattr(model, "generation_config", None), model.config, tokenizer)
        self.sampling_defaults = sampling_defaults_of(model)
        self.slots = config.slots
        self.continues_grammars = True  # the matcher consumes a request's grammar_prefix (processors.py)
        positions = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2**31
        num_blocks = config.num_blocks or self._blocks_for(model, config, int(positions))
        self.num_blocks = num_blocks
        self.cache_tokens = num_blocks * config.page_size  # what admission shares out (workers/admission.py)
        # A request longer than the whole cache kills the manager's loop for everyone: refuse it up front.
        self.max_model_len = min(int(positions), num_blocks * config.page_size)
        self._lock = threading.Lock()
        # The manager's request ids are the worker's seq ids made unique per add (``<seq id>#<n>``): a job a worker
        # stopped (fenced, cancelled) and then took back is added again under the same seq id while the manager
        # may still hold the first request (its scheduler failed with a KeyError on the second, and the first's
        # queued outputs would have been taken for the second's).
        self._request_numbers = itertools.count()
        self._request_of: dict[str, str] = {}  # seq id -> the manager's request id of its live request
        self._sent: dict[str, int] = {}  # the manager's request id -> tokens already reported
        self._recorded: set[str] = set()  # request ids whose logprobs come from our recorder
        self._failed: list[SeqUpdate] = []  # sequences lost with a dead generation loop, reported by poll
        self.fast_path = _install_fast_path(model)
        prefix.install()  # counts each prompt's tokens found in the prefix cache
        self._manager = self._start_manager()

    @staticmethod
    def _blocks_for(model: Any, config: EngineConfig, positions: int) -> int:
        """KV blocks from the memory budget, capped at what every slot at full context could use, and on CPU at
        CPU_MAX_CACHE_TOKENS: there the manager builds a dense attention mask over the whole cache per step
        (max_batch_tokens x cache tokens), which for a tiny model's 1 GiB budget would take gigabytes."""
        tokens = int(config.kv_cache_gib * 2**30) // kv_bytes_per_token(model)
        tokens = min(tokens, config.slots * positions)
        if model.device.type == "cpu":
            tokens = min(tokens, CPU_MAX_CACHE_TOKENS)
        return max(8, tokens // config.page_size)

    def _start_manager(self) -> Any:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        cb_config = ContinuousBatchingConfig(
            num_blocks=self.num_blocks,
            page_size=self.config.page_size,
            max_batch_tokens=self.config.max_batch_tokens,
            max_requests_per_batch=self.config.slots,
            per_request_processors=True,
            return_logprobs=False,  # logprobs come from our own recorder, only for requests that ask
            seed=self.config.seed,
            # Prompts that begin alike (a chat template's system prompt) share the KV blocks of what they have in
            # common, kept after their requests end until the cache needs the room: a prefill computes the rest only.
            allow_block_sharing=self.config.prefix_caching,
        )
        # The manager takes the argmax of what its logits processors leave; our sampler, last in the chain, draws
        # the rows that sample (see workers/sampling.py), which is far cheaper than the manager's own warpers.
        gen_config = GenerationConfig(
            do_sample=False,
            eos_token_id=sorted(self.eos_token_ids) or None,
            max_new_tokens=256,
        )
        manager = self.model.init_continuous_batching(
            generation_config=gen_config, continuous_batching_config=cb_config
        )
        self._extras = processors.install(manager, self.tokenizer)
        self._sampler = sampling.install(manager)
        manager.start()
        return manager

    def add(self, request: GenerationRequest) -> None:
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.max_model_len:
            raise ValueError(f"{total} tokens exceed this engine's limit of {self.max_model_len}")
        self._check_loop()
        request_id = f"{request.seq_id}#{next(self._request_numbers)}"
        greedy = request.temperature <= GREEDY_TEMPERATURE
        sampling_kwargs: dict[str, Any] = {sampling.TOP_K_KWARG: 1}  # top-k 1: greedy, left to the manager's argmax
        if not greedy:
            sampling_kwargs = {
                sampling.TEMPERATURE_KWARG: float(request.temperature),
                sampling.TOP_P_KWARG: float(request.top_p),
                sampling.TOP_K_KWARG: int(request.top_k or 0),
            }
            if request.seed is not None:
                sampling_kwargs[sampling.SEED_KWARG] = int(request.seed)
        if request.logprobs is not None:
            sampling_kwargs[processors.LOGPROBS_KWARG] = int(request.logprobs)
        if request.penalties is not None and request.penalties != (1.0, 0.0, 0.0):
            sampling_kwargs[processors.PENALTIES_KWARG] = tuple(float(p) for p in request.penalties)
        if request.grammar is not None:
            self._extras.grammar.register(request_id, request.grammar, request.grammar_prefix)
            sampling_kwargs[processors.GRAMMAR_KWARG] = request.grammar
        ends = (set() if request.ignore_eos else set(self.eos_token_ids)) | set(request.stop_token_ids)
        rules = processors.Rules.of(request.logit_bias, request.allowed_token_ids, request.min_tokens, ends)
        if rules is not None:
            self._extras.rules.register(request_id, rules)
            sampling_kwargs[processors.RULES_KWARG] = 1
        with self._lock:
            self._sent[request_id] = 0
            self._request_of[request.seq_id] = request_id
            if request.logprobs is not None:
                self._recorded.add(request_id)
        added = self._manager.add_request(
            request.prompt_ids,
            request_id=request_id,
            max_new_tokens=request.max_new_tokens,
            streaming=True,
            # the manager takes None for its generation config's EOS; -1 is none at all (ignore_eos)
            eos_token_id=sorted(ends) or -1,
            **sampling_kwargs,
        )
        if added is None:
            with self._lock:
                self._sent.pop(request_id, None)
                self._forget(request.seq_id, request_id)
            self._release(request_id)
            raise RuntimeError("the engine refused the request (its generation loop is stopping)")

    def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """Each prompt token's logprob given the tokens before it, with the ``top`` likeliest alternatives (the
        first token has none: nothing predicts it). One forward pass beside the batch, not through it."""
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self.model.device)
            logits = self.model(ids).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = logprobs.gather(1, torch.tensor(prompt_ids[1:], device=logits.device).unsqueeze(1)).squeeze(1)
            values, indices = logprobs.topk(top, dim=-1) if top > 0 else (logprobs[:, :0], logprobs[:, :0].long())
        scored: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
        for lp, ids_row, vals_row in zip(chosen.tolist(), indices.tolist(), values.tolist(), strict=True):
            scored.append((lp, list(zip(ids_row, vals_row, strict=True))))
        return scored

    def cancel(self, seq_id: str) -> None:
        with self._lock:
            request_id = self._request_of.pop(seq_id, None)
            known = request_id is not None and self._sent.pop(request_id, None) is not None
        if request_id is not None and known:
            self._manager.cancel_request(request_id)
            self._release(request_id)

    def _forget(self, seq_id: str, request_id: str) -> None:
        """Drop ``seq_id``'s mapping if it is still ``request_id``'s (a later add may have replaced it)."""
        if self._request_of.get(seq_id) == request_id:
            del self._request_of[seq_id]

    def _release(self, request_id: str) -> None:
        self._sampler.release(request_id)
        self._extras.release(request_id)
        self._recorded.discard(request_id)
        prefix.take(request_id)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._sent)

    def poll(self, timeout: float) -> list[SeqUpdate]:
        """Everything the engine produced since the last poll, waiting up to ``timeout`` for the first output.
        Several outputs of one sequence are merged, so under load one update carries several tokens."""
        self._check_loop()
        if self._failed:
            failed, self._failed = self._failed, []
            return failed
        outputs: dict[str, Any] = {}
        output_queue = self._manager.output_router.output_queue
        try:
            first = output_queue.get(timeout=timeout) if timeout > 0 else output_queue.get_nowait()
        except queue.Empty:
            return []
        outputs[first.request_id] = first
        while True:
            try:
                item = output_queue.get_nowait()
            except queue.Empty:
                break
            previous = outputs.get(item.request_id)
            # outputs are cumulative: the latest (or a finished one) supersedes the earlier ones
            if previous is None or not previous.is_finished():
                outputs[item.request_id] = item
        return self._updates(outputs.values())

    def _updates(self, outputs: Any) -> list[SeqUpdate]:
        from transformers.generation.continuous_batching.requests import RequestStatus

        updates = []
        with self._lock:
            for out in outputs:
                sent = self._sent.get(out.request_id)
                if sent is None:  # cancelled: the manager may still deliver what it had queued
                    continue
                seq_id = out.request_id.rpartition("#")[0]
                tokens = list(out.generated_tokens[sent:])
                logprobs = list(out.logprobs[sent : sent + len(tokens)]) if out.logprobs else None
                top: list[list[tuple[int, float]]] | None = None
                if out.request_id in self._recorded:
                    recorded = self._extras.logprobs.take(out.request_id, tokens) or []
                    logprobs = [chosen for chosen, _ in recorded]
                    top = [alternatives for _, alternatives in recorded]
                failed = out.status == RequestStatus.FAILED
                finished = out.is_finished()
                cached = prefix.take(out.request_id)  # before _release forgets it
                if finished:
                    del self._sent[out.request_id]
                    self._forget(seq_id, out.request_id)
                    self._release(out.request_id)
                else:
                    self._sent[out.request_id] = sent + len(tokens)
                updates.append(
                    SeqUpdate(
                        seq_id=seq_id,
                        token_ids=tokens,
                        logprobs=logprobs,
                        top_logprobs=top,
                        finished=finished,
                        error=(out.error or "generation failed") if failed else None,
                        cached_tokens=cached,
                    )
                )
        return updates

    def _check_loop(self) -> None:
        """If the generation loop died, fail the sequences that were in it and start a fresh one."""
        if self._manager.is_running():
            return
        fatal = self._manager.background_thread_status.fatal_error
        with self._lock:
            lost = [request_id.rpartition("#")[0] for request_id in self._sent]
            self._sent.clear()
            self._request_of.clear()
        log.error("the generation loop stopped (%s); failing %d sequences and restarting it", fatal, len(lost))
        self._manager = self._start_manager()
        self._failed += [
            SeqUpdate(seq_id=s, token_ids=[], finished=True, error=f"engine failure: {fatal}") for s in lost
        ]

    def kv_cache_usage(self) -> float | None:
        """The used fraction of the paged KV cache (0..1), for metrics; None before the first batch built it."""
        processor = getattr(self._manager, "batch_processor", None)
        cache = getattr(processor, "cache", None)
        if cache is None:
            return None
        return max(0.0, min(1.0, 1.0 - float(cache.compute_free_capacity(relative=True))))

    def close(self) -> None:
        try:
            self._manager.stop(block=True, timeout=10)
        except Exception:  # shutting down: nothing useful to do with an error here
            log.exception("error while stopping the engine")
