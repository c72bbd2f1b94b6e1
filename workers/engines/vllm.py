"""The vLLM engine: vLLM's ``LLMEngine`` driven in this process behind the worker's engine interface.

The worker stays the process that reads the Redis streams and publishes events; vLLM is a library here, not a
server. One thread owns the ``LLMEngine`` (it is not thread-safe): it takes the consume loop's commands (add,
abort, score a prompt) between steps, steps while any request is unfinished, and hands each step's new tokens to
:meth:`VllmEngine.poll` through a queue. Outputs are deltas (``RequestOutputKind.DELTA``) of token ids only: the
worker detokenises and matches stop strings itself, as it does for every engine, so vLLM's detokeniser is off.

What maps onto vLLM's own parameters: temperature, top-p, top-k, per-request seeds, stop token ids, logprobs with
top alternatives (of the raw logits, as OpenAI reports them), prompt logprobs, presence, frequency and repetition
penalties, and grammars (JSON mode, JSON schemas, forced tool calls) through vLLM's structured outputs with the
llguidance backend. What it cannot honour is refused with a :class:`~broker.errors.InvalidRequest` naming the
parameter, which the worker answers with a 400. That translation is workers/engines/vllm_requests.py, the outputs'
into SeqUpdates workers/engines/vllm_outputs.py, the engine's configuration workers/engines/vllm_setup.py.

When a step fails: an out-of-memory step (torch's OutOfMemoryError, CUDA's "out of memory") is its batch's problem,
not the engine's: every sequence vLLM held then fails with that error (the worker answers ``out_of_memory``, a 503
its client may retry), they are aborted, the prefix cache is dropped (vLLM marks a step's blocks cached when it
schedules them, so the failed step's were never written), and the engine goes on. Any other error leaves vLLM's
scheduler and model runner in a state nothing vouches for (vLLM's own server shuts down on it, as EngineDeadError):
the engine sets :attr:`VllmEngine.failure` and refuses work with :class:`~workers.engine.EngineDead`; the sequences
it held are not failed, the worker hands their jobs over to live workers and exits for its supervisor to restart it
(workers/service.py), rather than rebuilding an engine in a process whose device state may be what broke.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from typing import Any

from workers.engine import (
    EngineDead,
    GenerationRequest,
    SamplingDefaults,
    SeqUpdate,
    eos_ids_of,
    is_out_of_memory,
    sampling_defaults_of,
)
from workers.engines.vllm_outputs import kv_usage_of, token_logprobs, update_of
from workers.engines.vllm_requests import check_top, sampling_params, scoring_params
from workers.engines.vllm_setup import ConfigHolder, VllmConfig, check_version, engine_args, generation_config

log = logging.getLogger(__name__)

SCORE_PREFIX = "qc-score-"  # request ids of prompt-logprob requests, answered to their caller, never polled
SCORE_TIMEOUT = 300.0


class _Scoring:
    """A prompt-logprobs request waiting for its one output."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.output: Any = None
        self.error: str | None = None
        self.dead = False  # the engine died while it waited


class VllmEngine:
    """vLLM's ``LLMEngine`` in a thread of the worker's process."""

    def __init__(self, model_dir: str, tokenizer: Any, config: VllmConfig) -> None:
        # In this process, not in an engine-core child: the worker process is what heartbeats and gets reclaimed,
        # and a SIGKILL of it must take the engine along.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM would pin its OpenMP threads to cores; on a machine shared with the API, Redis and other workers the
        # torch threads the worker was given (--num-threads) are the budget instead. VLLM_CPU_OMP_THREADS_BIND wins.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from vllm.v1.engine.llm_engine import LLMEngine

        check_version()
        self.config = config
        self.tokenizer = tokenizer
        started = time.monotonic()
        self._engine = LLMEngine.from_engine_args(engine_args(model_dir, config))
        model_config = self._engine.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.max_logprobs = int(model_config.max_logprobs)
        self.slots = config.slots
        # vLLM's structured outputs compile each request's grammar from its start and take no tokens to advance it
        # by (StructuredOutputsParams has no such field; the prompt never reaches the matcher), so a job under a
        # grammar cannot be continued mid-output here: it runs again from its start (workers/service.py)
        self.continues_grammars = False
        self.vocab_size = int(model_config.get_vocab_size())
        model_generation = generation_config(model_dir)
        self.eos_token_ids = eos_ids_of(model_generation, model_config.hf_config, tokenizer)
        self.sampling_defaults: SamplingDefaults = sampling_defaults_of(ConfigHolder(model_generation))
        log.info(
            "vLLM engine ready in %.1fs: max_model_len=%d, %d sequences",
            time.monotonic() - started, self.max_model_len, self.slots,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._live: set[str] = set()  # seq ids added and not finished or cancelled
        self._top: dict[str, int] = {}  # seq id -> alternatives per token it asked for
        self._routes: dict[str, queue.Queue[list[SeqUpdate]]] = {}  # seq id -> a view's queue (see share)
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._outputs: queue.Queue[list[SeqUpdate]] = queue.Queue()
        self._scoring: dict[str, _Scoring] = {}
        self.tokens_after_cancel = 0  # generated for sequences already cancelled (vLLM had not aborted them yet)
        self._closing = threading.Event()
        self.failure: str | None = None  # why the engine stopped for good (see the module's docstring)
        self._held: set[str] = set()  # request ids inside vLLM now; the engine thread's alone
        self._kv_usage: float | None = None  # set by the engine thread after each round (see kv_cache_usage)
        self._thread = threading.Thread(target=self._loop, name="queuechat-vllm", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the consume loop's side

    def sampling_params(self, request: GenerationRequest) -> Any:
        """vLLM's SamplingParams for a request; InvalidRequest (a 400) for what vLLM cannot do."""
        return sampling_params(request, self.max_logprobs)

    def share(self, slots: int) -> EngineView:
        """A view of this engine with its own outputs, for another worker in this process (tests run many
        workers on one loaded engine)."""
        return EngineView(self, slots)

    def add(self, request: GenerationRequest, route: queue.Queue[list[SeqUpdate]] | None = None) -> None:
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.max_model_len:
            raise ValueError(f"{total} tokens exceed this engine's limit of {self.max_model_len}")
        if self.failure is not None:
            raise EngineDead(f"the vLLM engine stopped: {self.failure}")
        params = self.sampling_params(request)
        with self._lock:
            self._live.add(request.seq_id)
            if request.logprobs is not None:
                self._top[request.seq_id] = request.logprobs
            if route is not None:
                self._routes[request.seq_id] = route
        self._commands.put(("add", request.seq_id, list(request.prompt_ids), params))

    def cancel(self, seq_id: str) -> None:
        with self._lock:
            known = seq_id in self._live
            self._live.discard(seq_id)
            self._top.pop(seq_id, None)
            self._routes.pop(seq_id, None)
        if known:
            self._commands.put(("abort", seq_id))

    def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """Each prompt token's logprob given the tokens before it, with the ``top`` likeliest alternatives (the
        first has none): a one-token request with vLLM's prompt logprobs, waited for here."""
        check_top(top, self.max_logprobs)
        if self.failure is not None:
            raise EngineDead(f"the vLLM engine stopped: {self.failure}")
        request_id = f"{SCORE_PREFIX}{uuid.uuid4().hex}"
        scoring = _Scoring()
        with self._lock:
            self._scoring[request_id] = scoring
        params = scoring_params(top)
        self._commands.put(("add", request_id, list(prompt_ids), params))
        if not scoring.done.wait(SCORE_TIMEOUT):
            self._commands.put(("abort", request_id))
            raise RuntimeError("scoring the prompt timed out")
        if scoring.dead:
            raise EngineDead(scoring.error or "the vLLM engine stopped")
        if scoring.error is not None:
            raise RuntimeError(scoring.error)
        scored: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
        for token, position in zip(prompt_ids[1:], (scoring.output.prompt_logprobs or [None])[1:], strict=False):
            chosen, alternatives = token_logprobs(token, position, top)
            scored.append((chosen, alternatives))
        return scored

    def poll(self, timeout: float, source: queue.Queue[list[SeqUpdate]] | None = None) -> list[SeqUpdate]:
        """Everything the engine produced since the last poll, waiting up to ``timeout`` for the first step's.
        Several steps of one sequence are merged, so under load one update carries several tokens."""
        outputs = self._outputs if source is None else source
        try:
            batches = [outputs.get(timeout=timeout) if timeout > 0 else outputs.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                batches.append(outputs.get_nowait())
            except queue.Empty:
                break
        merged: dict[str, SeqUpdate] = {}
        for batch in batches:
            for update in batch:
                previous = merged.get(update.seq_id)
                if previous is None:
                    merged[update.seq_id] = update
                    continue
                previous.token_ids += update.token_ids
                if previous.logprobs is not None and update.logprobs is not None:
                    previous.logprobs += update.logprobs
                if previous.top_logprobs is not None and update.top_logprobs is not None:
                    previous.top_logprobs += update.top_logprobs
                previous.finished = previous.finished or update.finished
                previous.error = previous.error or update.error
                if update.cached_tokens is not None:
                    previous.cached_tokens = update.cached_tokens
        with self._lock:
            live = set(self._live)
            for update in merged.values():
                if update.finished:
                    self._live.discard(update.seq_id)
                    self._routes.pop(update.seq_id, None)
        # a cancelled sequence's last step may still arrive: it is nobody's now
        kept = [u for u in merged.values() if u.seq_id in live]
        if len(kept) < len(merged):
            dropped = sum(len(u.token_ids) for u in merged.values() if u.seq_id not in live)
            self.tokens_after_cancel += dropped
        return kept

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._live)

    def kv_cache_usage(self) -> float | None:
        """The used fraction of vLLM's KV cache blocks (0..1) after the engine thread's last round, for metrics;
        None where the scheduler is not in this process (VLLM_ENABLE_V1_MULTIPROCESSING=1)."""
        return self._kv_usage

    def live(self) -> set[str]:
        with self._lock:
            return set(self._live)

    def close(self) -> None:
        self._closing.set()
        self._commands.put(("wake",))
        self._thread.join(30)
        engine, self._engine = self._engine, None
        del engine
        try:
            import gc

            gc.collect()
        except Exception:  # shutting down: nothing useful to do with an error here
            log.exception("error while stopping the engine")

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        engine = self._engine
        while not self._closing.is_set():
            try:
                busy = engine.has_unfinished_requests()
                self._run_commands(engine, wait=not busy)
                outputs = engine.step() if engine.has_unfinished_requests() else []
            except Exception as exc:
                if not is_out_of_memory(exc):  # the engine died: refuse new work, its jobs are handed over
                    self._die(exc)
                    return
                try:
                    self._shed(engine, exc)
                except Exception as again:  # it could not be emptied: as dead as any other failure
                    self._die(again)
                    return
                continue
            finally:
                self._kv_usage = kv_usage_of(engine)
            for output in outputs:
                if output.finished:
                    self._held.discard(output.request_id)
            self._put([u for u in (self._update_of(o) for o in outputs) if u is not None])

    def _run_commands(self, engine: Any, *, wait: bool) -> None:
        from vllm.inputs import TokensPrompt

        try:
            command = self._commands.get(timeout=0.5) if wait else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            kind = command[0]
            if kind == "add":
                _, request_id, prompt_ids, params = command
                try:
                    engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt_ids), params)
                except Exception as exc:  # this request's own problem (vLLM validates it here)
                    log.warning("vLLM refused request %s: %s", request_id, exc)
                    self._fail_one(request_id, f"{type(exc).__name__}: {exc}")
                else:
                    self._held.add(request_id)
            elif kind == "abort":
                engine.abort_request([command[1]])
                self._held.discard(command[1])
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _put(self, updates: list[SeqUpdate]) -> None:
        if not updates:
            return
        with self._lock:
            routes = [self._routes.get(u.seq_id, self._outputs) for u in updates]
        grouped: dict[int, tuple[queue.Queue[list[SeqUpdate]], list[SeqUpdate]]] = {}
        for update, route in zip(updates, routes, strict=True):
            grouped.setdefault(id(route), (route, []))[1].append(update)
        for route, batch in grouped.values():
            route.put(batch)

    def _fail_one(self, request_id: str, error: str) -> None:
        with self._lock:
            scoring = self._scoring.pop(request_id, None)
        if scoring is not None:
            scoring.error = error
            scoring.done.set()
            return
        self._put([SeqUpdate(seq_id=request_id, token_ids=[], finished=True, error=error)])

    def _update_of(self, output: Any) -> SeqUpdate | None:
        request_id = output.request_id
        if request_id.startswith(SCORE_PREFIX):
            if output.finished:
                with self._lock:
                    scoring = self._scoring.pop(request_id, None)
                if scoring is not None:
                    scoring.output = output
                    scoring.done.set()
            return None
        with self._lock:
            wanted = self._top.get(request_id, 0)
            if output.finished:
                self._top.pop(request_id, None)
        return update_of(output, wanted)

    def _shed(self, engine: Any, exc: BaseException) -> None:
        """After a step that ran out of memory: fail and abort every request vLLM held (the step's batch, and what
        waited behind it), drop the prefix cache (the failed step's blocks are marked cached but were never
        written), give the allocator's cache back, and go on with an empty engine."""
        error = f"{type(exc).__name__}: {exc}"
        held = sorted(self._held)
        log.error("a vLLM step ran out of memory (%s); failing the %d requests it held", error, len(held))
        engine.abort_request(held)
        self._held.clear()
        if not engine.reset_prefix_cache():
            raise RuntimeError(f"the KV cache still held blocks after aborting every request ({error})")
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing the cache is a courtesy to the next step; the engine goes on without it
            log.exception("could not empty the CUDA cache")
        for request_id in held:
            self._fail_one(request_id, error)

    def _die(self, exc: BaseException) -> None:
        """The engine failed as a whole: refuse new work (EngineDead) and wake whoever waits on a prompt's score.
        Its sequences are not failed: the worker sees ``failure``, hands their jobs over and exits."""
        self.failure = f"{type(exc).__name__}: {exc}"
        log.error("the vLLM engine failed (%s); it serves nothing more", self.failure, exc_info=exc)
        with self._lock:
            scoring = list(self._scoring.values())
            self._scoring.clear()
        for waiting in scoring:
            waiting.error = f"the vLLM engine stopped: {self.failure}"
            waiting.dead = True
            waiting.done.set()


class EngineView:
    """One worker's share of a :class:`VllmEngine`: its own slots and outputs; closing it leaves the engine up."""

    def __init__(self, engine: VllmEngine, slots: int) -> None:
        self.engine = engine
        self.slots = slots
        self.max_model_len = engine.max_model_len
        self.eos_token_ids = engine.eos_token_ids
        self.sampling_defaults = engine.sampling_defaults
        self.continues_grammars = engine.continues_grammars
        self.tokenizer = engine.tokenizer
        self._outputs: queue.Queue[list[SeqUpdate]] = queue.Queue()
        self._seqs: set[str] = set()

    def add(self, request: GenerationRequest) -> None:
        self.engine.add(request, route=self._outputs)
        self._seqs.add(request.seq_id)

    @property
    def running(self) -> int:
        live = self.engine.live()
        self._seqs &= live
        return len(self._seqs)

    def cancel(self, seq_id: str) -> None:
        self.engine.cancel(seq_id)

    @property
    def failure(self) -> str | None:
        return self.engine.failure

    def kv_cache_usage(self) -> float | None:
        return self.engine.kv_cache_usage()

    def poll(self, timeout: float) -> list[SeqUpdate]:
        return self.engine.poll(timeout, source=self._outputs)

    def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        return self.engine.prompt_logprobs(prompt_ids, top)

    def close(self) -> None:
        pass
