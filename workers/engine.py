"""The batching engine: transformers' continuous-batching manager behind a small interface.

It knows token ids and sampling parameters, nothing of Redis or text. New sequences join between decode steps,
finished and cancelled ones leave at once, and each keeps its own paged KV cache. The manager's sharp edges
(see ENGINE-NOTES.md) are handled here: the KV cache is sized explicitly, a request that cannot fit is refused
before it reaches the manager, temperature 0 becomes top-k 1, and a dead generation loop is rebuilt after
failing only the sequences that were in it.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from workers import attention, processors, sampling

log = logging.getLogger(__name__)

# Below this temperature logits divided by it overflow and the probabilities turn NaN; such requests are greedy.
GREEDY_TEMPERATURE = 1e-5
# On CPU the cache is attended through a dense mask as wide as the cache: 32k tokens x 512 batch tokens = 64 MiB.
CPU_MAX_CACHE_TOKENS = 32_768


@dataclass
class GenerationRequest:
    seq_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: none; N: the chosen token's and the N most likely alternatives
    penalties: tuple[float, float, float] | None = None  # (repetition, presence, frequency)
    grammar: str | None = None  # an llguidance grammar the output must follow


@dataclass
class SeqUpdate:
    """What happened to one sequence since the last poll."""

    seq_id: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finished: bool = False
    error: str | None = None


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a parameter out gets: the model's generation_config, else OpenAI's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None


def sampling_defaults_of(model: Any) -> SamplingDefaults:
    config = getattr(model, "generation_config", None)
    if config is None or not getattr(config, "do_sample", False):
        return SamplingDefaults()  # without do_sample, a generation_config's sampling values are placeholders
    top_k = getattr(config, "top_k", None)
    return SamplingDefaults(
        temperature=float(getattr(config, "temperature", None) or 1.0),
        top_p=float(getattr(config, "top_p", None) or 1.0),
        top_k=int(top_k) if top_k else None,
    )


class Engine(Protocol):
    max_model_len: int
    slots: int
    eos_token_ids: frozenset[int]
    sampling_defaults: SamplingDefaults

    def add(self, request: GenerationRequest) -> None: ...
    def prompt_logprobs(
        self, prompt_ids: list[int], top: int
    ) -> list[tuple[float | None, list[tuple[int, float]]]]: ...
    def cancel(self, seq_id: str) -> None: ...
    def poll(self, timeout: float) -> list[SeqUpdate]: ...
    def close(self) -> None: ...


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
    return 2 * cfg.num_hidden_layers * heads * head_dim * model.dtype.itemsize


def eos_ids_of(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class ContinuousBatchingEngine:
    """Runs transformers' ``ContinuousBatchingManager`` in its own background thread."""

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = eos_ids_of(model, tokenizer)
        self.sampling_defaults = sampling_defaults_of(model)
        self.slots = config.slots
        positions = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2**31
        num_blocks = config.num_blocks or self._blocks_for(model, config, int(positions))
        self.num_blocks = num_blocks
        # A request longer than the whole cache kills the manager's loop for everyone: refuse it up front.
        self.max_model_len = min(int(positions), num_blocks * config.page_size)
        self._lock = threading.Lock()
        self._sent: dict[str, int] = {}  # seq id -> tokens already reported
        self._recorded: set[str] = set()  # seq ids whose logprobs come from our recorder
        self._failed: list[SeqUpdate] = []  # sequences lost with a dead generation loop, reported by poll
        if model.device.type == "cpu" and model.config._attn_implementation == "sdpa":
            attention.install()  # decode steps attend per sequence, not across the whole batch
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
            self._extras.grammar.register(request.seq_id, request.grammar)
            sampling_kwargs[processors.GRAMMAR_KWARG] = request.grammar
        eos = sorted(self.eos_token_ids | set(request.stop_token_ids))
        with self._lock:
            self._sent[request.seq_id] = 0
            if request.logprobs is not None:
                self._recorded.add(request.seq_id)
        added = self._manager.add_request(
            request.prompt_ids,
            request_id=request.seq_id,
            max_new_tokens=request.max_new_tokens,
            streaming=True,
            eos_token_id=eos or None,
            **sampling_kwargs,
        )
        if added is None:
            with self._lock:
                self._sent.pop(request.seq_id, None)
            self._release(request.seq_id)
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
            known = self._sent.pop(seq_id, None) is not None
        if known:
            self._manager.cancel_request(seq_id)
            self._release(seq_id)

    def _release(self, seq_id: str) -> None:
        self._sampler.release(seq_id)
        self._extras.release(seq_id)
        self._recorded.discard(seq_id)

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
                tokens = list(out.generated_tokens[sent:])
                logprobs = list(out.logprobs[sent : sent + len(tokens)]) if out.logprobs else None
                top: list[list[tuple[int, float]]] | None = None
                if out.request_id in self._recorded:
                    recorded = self._extras.logprobs.take(out.request_id, tokens) or []
                    logprobs = [chosen for chosen, _ in recorded]
                    top = [alternatives for _, alternatives in recorded]
                failed = out.status == RequestStatus.FAILED
                finished = out.is_finished()
                if finished:
                    del self._sent[out.request_id]
                    self._release(out.request_id)
                else:
                    self._sent[out.request_id] = sent + len(tokens)
                updates.append(
                    SeqUpdate(
                        seq_id=out.request_id,
                        token_ids=tokens,
                        logprobs=logprobs,
                        top_logprobs=top,
                        finished=finished,
                        error=(out.error or "generation failed") if failed else None,
                    )
                )
        return updates

    def _check_loop(self) -> None:
        """If the generation loop died, fail the sequences that were in it and start a fresh one."""
        if self._manager.is_running():
            return
        fatal = self._manager.background_thread_status.fatal_error
        with self._lock:
            lost = list(self._sent)
            self._sent.clear()
        log.error("the generation loop stopped (%s); failing %d sequences and restarting it", fatal, len(lost))
        self._manager = self._start_manager()
        self._failed += [
            SeqUpdate(seq_id=s, token_ids=[], finished=True, error=f"engine failure: {fatal}") for s in lost
        ]

    def close(self) -> None:
        try:
            self._manager.stop(block=True, timeout=10)
        except Exception:  # shutting down: nothing useful to do with an error here
            log.exception("error while stopping the engine")


def set_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads: with few cores shared by several processes, the default oversubscribes."""
    if num_threads:
        torch.set_num_threads(num_threads)
