"""Per-request logits processors that transformers' continuous-batching manager lacks: log-probabilities with the
top alternatives, OpenAI's and Hugging Face's repetition penalties, logit bias, allowed tokens and min_tokens, and
grammar-constrained output (JSON mode, JSON schemas, forced tool calls) through llguidance.

The manager hands a processor the requests of a step (``prepare_tensor_args``) and then the step's logits, one row
per request in the same order (``__call__``); between the two only an int32 tensor travels. Each processor puts a
fresh key per row in that tensor and keeps the row's payload under the key until the call pops it, so a payload can
never be applied to another step's rows.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

log = logging.getLogger(__name__)

LOGPROBS_KWARG = "qc_logprobs"  # int: how many top alternatives (0: only the chosen token's)
PENALTIES_KWARG = "qc_penalties"  # tuple: (repetition, presence, frequency)
GRAMMAR_KWARG = "qc_grammar"  # str: an llguidance grammar (JSON)
RULES_KWARG = "qc_rules"  # int 1: the request registered TokenRules (logit bias, allowed tokens, min_tokens)


class KeyedProcessor(ContinuousBatchingLogitsProcessor):
    """The key-per-row bookkeeping every processor here shares. -1 marks a row the processor leaves alone."""

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_key = 0
        self._payloads: dict[int, Any] = {}

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(-1)

    def _key_for(self, payload: Any) -> int:
        key = self._next_key
        self._next_key = (self._next_key + 1) % 2**31
        self._payloads[key] = payload
        return key

    def payload_of(self, request: Any) -> Any:
        """The payload this processor wants for a request's row, or None to leave the row alone."""
        raise NotImplementedError

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        keys = []
        with self._lock:
            for request in requests_with_new_token:
                try:
                    payload = self.payload_of(request)
                except Exception:  # an exception here would kill the generation loop of every request
                    log.exception("%s skipped a row", type(self).__name__)
                    payload = None
                keys.append(-1 if payload is None else self._key_for(payload))
        return torch.tensor(keys, dtype=torch.int32)

    def take_payloads(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> list[tuple[int, Any]]:
        """(row, payload) of this step's rows that have one."""
        keys = tensor_arg[: scores.size(0)].tolist()
        if max(keys, default=-1) < 0:
            return []
        with self._lock:
            found = [(row, self._payloads.pop(key, None)) for row, key in enumerate(keys) if key >= 0]
        return [(row, payload) for row, payload in found if payload is not None]

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        for row, payload in self.take_payloads(scores, tensor_arg):
            try:
                self.apply(scores, row, payload)
            except Exception:  # as above: one row's failure must not end the loop for all
                log.exception("%s skipped a row", type(self).__name__)
        return scores

    def apply(self, scores: torch.Tensor, row: int, payload: Any) -> None:
        raise NotImplementedError


def _kwargs(request: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = request.state.logit_processor_kwargs
    return kwargs


def _request_id(request: Any) -> str:
    return str(request.state.request_id)


@dataclass
class StepLogprobs:
    """The model's own distribution at one generated position, before any sampling parameter touched it."""

    logprobs: torch.Tensor  # the whole row, on the CPU
    top_ids: list[int]
    top_logprobs: list[float]


class LogprobRecorder(KeyedProcessor):
    """Records log-probabilities of the raw logits (as OpenAI and vLLM report them) for requests that ask, first
    in the chain so neither penalties nor temperature change them. The engine pairs record k with token k."""

    supported_kwargs = {LOGPROBS_KWARG: int}

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, deque[StepLogprobs]] = {}

    def payload_of(self, request: Any) -> Any:
        top = _kwargs(request).get(LOGPROBS_KWARG)
        return None if top is None else (_request_id(request), int(top))

    def apply(self, scores: torch.Tensor, row: int, payload: Any) -> None:
        request_id, top = payload
        logprobs = torch.log_softmax(scores[row].float(), dim=-1)
        values, ids = torch.topk(logprobs, top) if top > 0 else (logprobs[:0], logprobs[:0].long())
        step = StepLogprobs(logprobs.cpu(), ids.tolist(), values.tolist())
        with self._lock:
            self.records.setdefault(request_id, deque()).append(step)

    def take(self, request_id: str, token_ids: list[int]) -> list[tuple[float, list[tuple[int, float]]]] | None:
        """(chosen token's logprob, top alternatives) for the next ``token_ids`` of a request."""
        with self._lock:
            records = self.records.get(request_id)
            if records is None:
                return None
            steps = [records.popleft() if records else None for _ in token_ids]
        out: list[tuple[float, list[tuple[int, float]]]] = []
        for token, step in zip(token_ids, steps, strict=True):
            if step is None:  # never expected: one record per generated token
                out.append((float("nan"), []))
                continue
            chosen = float(step.logprobs[token]) if token < step.logprobs.numel() else float("-inf")
            out.append((chosen, list(zip(step.top_ids, step.top_logprobs, strict=True))))
        return out

    def release(self, request_id: str) -> None:
        with self._lock:
            self.records.pop(request_id, None)


class Penalties(KeyedProcessor):
    """OpenAI's presence and frequency penalties (over generated tokens, subtracted from logits) and Hugging Face's
    multiplicative repetition penalty (over prompt and generated tokens)."""

    supported_kwargs = {PENALTIES_KWARG: tuple}

    def payload_of(self, request: Any) -> Any:
        penalties = _kwargs(request).get(PENALTIES_KWARG)
        if penalties is None:
            return None
        state = request.state
        return penalties, list(state.initial_tokens), list(state.generated_tokens)

    def apply(self, scores: torch.Tensor, row: int, payload: Any) -> None:
        (repetition, presence, frequency), prompt, generated = payload
        logits = scores[row]
        vocab = logits.numel()
        if repetition != 1.0:
            seen = torch.tensor(sorted({t for t in prompt + generated if 0 <= t < vocab}), dtype=torch.long)
            if seen.numel():
                seen = seen.to(logits.device)
                picked = logits[seen]
                logits[seen] = torch.where(picked > 0, picked / repetition, picked * repetition)
        if generated and (presence or frequency):
            ids = torch.tensor([t for t in generated if 0 <= t < vocab], dtype=torch.long)
            counts = torch.bincount(ids, minlength=vocab).to(device=logits.device, dtype=logits.dtype)
            logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)


@dataclass
class Rules:
    """One request's token rules, as tensors ready to apply to its row."""

    bias_ids: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    allowed: torch.Tensor | None = None
    min_tokens: int = 0
    end_ids: torch.Tensor | None = None  # masked until min_tokens tokens were generated

    @classmethod
    def of(
        cls,
        logit_bias: dict[int, float] | None,
        allowed: list[int] | None,
        min_tokens: int,
        end_ids: set[int],
    ) -> Rules | None:
        if not logit_bias and not allowed and not (min_tokens and end_ids):
            return None
        rules = cls(min_tokens=min_tokens)
        if logit_bias:
            rules.bias_ids = torch.tensor(list(logit_bias), dtype=torch.long)
            rules.bias = torch.tensor(list(logit_bias.values()), dtype=torch.float32)
        if allowed:
            rules.allowed = torch.tensor(sorted(set(allowed)), dtype=torch.long)
        if min_tokens and end_ids:
            rules.end_ids = torch.tensor(sorted(end_ids), dtype=torch.long)
        return rules


class TokenRules(KeyedProcessor):
    """OpenAI's ``logit_bias`` (added to the logits) and vLLM's ``allowed_token_ids`` (every other token masked)
    and ``min_tokens`` (no EOS or stop token id before that many tokens)."""

    supported_kwargs = {RULES_KWARG: int}

    def __init__(self) -> None:
        super().__init__()
        self._rules: dict[str, Rules] = {}

    def register(self, request_id: str, rules: Rules) -> None:
        with self._lock:
            self._rules[request_id] = rules

    def payload_of(self, request: Any) -> Any:
        if not _kwargs(request).get(RULES_KWARG):
            return None
        rules = self._rules.get(_request_id(request))
        if rules is None:
            return None
        return rules, len(request.state.generated_tokens)

    def apply(self, scores: torch.Tensor, row: int, payload: Any) -> None:
        rules, generated = payload
        logits = scores[row]
        device = logits.device
        if rules.allowed is not None:
            allowed = rules.allowed.to(device)
            kept = logits[allowed]
            logits.fill_(float("-inf"))
            logits[allowed] = kept
        if rules.bias_ids is not None and rules.bias is not None:
            logits.index_add_(0, rules.bias_ids.to(device), rules.bias.to(device=device, dtype=logits.dtype))
        if rules.end_ids is not None and generated < rules.min_tokens:
            logits[rules.end_ids.to(device)] = float("-inf")

    def release(self, request_id: str) -> None:
        with self._lock:
            self._rules.pop(request_id, None)


@dataclass
class _Constrained:
    matcher: Any
    consumed: int = 0
    broken: bool = False
    bitmask: Any = field(default=None)


class GrammarConstraint(KeyedProcessor):
    """Masks every token the request's grammar does not allow next (llguidance). Each request's matcher follows
    the tokens the manager generated, which it reads from the request state at the next step."""

    supported_kwargs = {GRAMMAR_KWARG: str}

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self._tokenizer = tokenizer
        self._ll_tokenizer: Any = None
        self._constrained: dict[str, _Constrained] = {}

    def register(self, request_id: str, grammar: str, matched: list[int] | None = None) -> None:
        """Compile a request's grammar before the request reaches the manager; raises ValueError when the grammar
        is invalid, so a bad grammar fails its own request and never the generation loop. ``matched``: tokens the
        grammar already accepted (a continued job's, at the end of its prompt), consumed here so the matcher stands
        where the first worker's did and the request's own tokens go on from there."""
        import llguidance
        import llguidance.hf

        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(self._tokenizer)
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar)
        if matcher.is_error():
            raise ValueError(f"invalid grammar: {matcher.get_error()}")
        if matched and not matcher.consume_tokens(matched):
            raise ValueError(f"the tokens already sent do not follow the grammar: {matcher.get_error()}")
        with self._lock:
            self._constrained[request_id] = _Constrained(matcher)

    def payload_of(self, request: Any) -> Any:
        if _kwargs(request).get(GRAMMAR_KWARG) is None:
            return None
        import llguidance.torch as ll_torch

        request_id = _request_id(request)
        constrained = self._constrained.get(request_id)
        if constrained is None:
            return None
        generated = request.state.generated_tokens
        if len(generated) > constrained.consumed:
            new = generated[constrained.consumed :]
            constrained.consumed = len(generated)
            if not constrained.broken and not constrained.matcher.consume_tokens(new):
                log.warning("request %s left its grammar: %s", request_id, constrained.matcher.get_error())
                constrained.broken = True
        if constrained.broken:
            return None
        bitmask = ll_torch.allocate_token_bitmask(1, self._ll_tokenizer.vocab_size)
        ll_torch.fill_next_token_bitmask(constrained.matcher, bitmask, 0)
        return bitmask

    def apply(self, scores: torch.Tensor, row: int, payload: Any) -> None:
        import llguidance.torch as ll_torch

        allowed = self._ll_tokenizer.vocab_size
        logits = scores[row : row + 1]
        if logits.size(1) > allowed:  # the model's padded vocabulary beyond the tokenizer's: never allowed
            logits[:, allowed:] = float("-inf")
        view = logits[:, :allowed]
        ll_torch.apply_token_bitmask_inplace(view, payload.to(view.device))

    def release(self, request_id: str) -> None:
        with self._lock:
            self._constrained.pop(request_id, None)


@dataclass
class Installed:
    logprobs: LogprobRecorder
    penalties: Penalties
    rules: TokenRules
    grammar: GrammarConstraint

    def release(self, request_id: str) -> None:
        self.logprobs.release(request_id)
        self.rules.release(request_id)
        self.grammar.release(request_id)


def install(manager: Any, tokenizer: Any) -> Installed:
    """Put the processors at the head of a manager's chain, in this order: record logprobs of the raw logits,
    apply penalties, then logit bias, allowed tokens and min_tokens, mask by grammar; then the sampler
    (workers/sampling.py, last) sees only allowed tokens. Call before ``manager.start()``."""
    installed = Installed(LogprobRecorder(), Penalties(), TokenRules(), GrammarConstraint(tokenizer))
    for processor in reversed([installed.logprobs, installed.penalties, installed.rules, installed.grammar]):
        add_to_chain(manager, processor, first=True)
    return installed


def add_to_chain(manager: Any, processor: ContinuousBatchingLogitsProcessor, *, first: bool = False) -> None:
    """Put a per-request processor into a manager's chain (at its head, or its end); before ``manager.start()``."""
    processors = manager.logit_processor
    if first:
        processors.logits_processor.insert(0, processor)
    else:
        processors.logits_processor.append(processor)
    processors.tensors_required += 1
    processors.supported_keys.update(processor.supported_kwargs)
    processors.do_processing = True
