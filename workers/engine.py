"""The worker's engine interface: what the consume loop asks of whatever generates tokens.

An engine knows token ids and sampling parameters, nothing of Redis or text. The backends live in
``workers/engines/`` (one per engine, imported only when built); this module holds what they share with the
consume loop and nothing that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Below this temperature logits divided by it overflow and the probabilities turn NaN; such requests are greedy.
GREEDY_TEMPERATURE = 1e-5


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
    # the tokens the grammar has already matched (the end of prompt_ids): a continuation's tokens its client has,
    # so the output goes on from where the grammar stood, not from its start
    grammar_prefix: list[int] = field(default_factory=list)
    ignore_eos: bool = False  # the model's EOS tokens do not end the sequence (stop_token_ids still do)
    min_tokens: int = 0  # neither EOS nor a stop token id is generated before this many tokens
    logit_bias: dict[int, float] | None = None  # added to the logits before sampling
    allowed_token_ids: list[int] | None = None  # every other token is masked out


@dataclass
class SeqUpdate:
    """What happened to one sequence since the last poll."""

    seq_id: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finished: bool = False
    error: str | None = None
    cached_tokens: int | None = None  # of the prompt, found in the prefix cache (engines that tell)


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a parameter out gets: the model's generation_config, else OpenAI's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None


def sampling_defaults_of(model: Any) -> SamplingDefaults:
    """From anything with a ``generation_config`` (a transformers model, or a holder of one)."""
    config = getattr(model, "generation_config", None)
    if config is None or not getattr(config, "do_sample", False):
        return SamplingDefaults()  # without do_sample, a generation_config's sampling values are placeholders
    top_k = getattr(config, "top_k", None)
    return SamplingDefaults(
        temperature=float(getattr(config, "temperature", None) or 1.0),
        top_p=float(getattr(config, "top_p", None) or 1.0),
        top_k=int(top_k) if top_k else None,
    )


def eos_ids_of(*sources: Any) -> frozenset[int]:
    """Every end-of-sequence id named by any of ``sources`` (generation config, model config, tokenizer)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def is_out_of_memory(exc: BaseException | None = None, text: str = "") -> bool:
    """Whether an engine error is running out of (GPU) memory: torch's OutOfMemoryError, or a message that says so
    (an error that reached the worker as text: a failed sequence's update)."""
    said = f"{type(exc).__name__}: {exc} {text}" if exc is not None else text
    lowered = said.lower()
    return "outofmemoryerror" in lowered or "out of memory" in lowered


class EngineDead(RuntimeError):
    """The engine failed as a whole and serves nothing more (see ``Engine.failure``): the job that met it is not at
    fault, and is handed over with the rest (workers/service.py) instead of failed."""


class Engine(Protocol):
    max_model_len: int
    slots: int
    eos_token_ids: frozenset[int]
    sampling_defaults: SamplingDefaults
    # whether a request's grammar can start past its grammar_prefix; a continued job needs it (workers/service.py)
    continues_grammars: bool
    # An engine may also have ``failure``: None while it serves, else why it stopped for good (its state is suspect,
    # so the worker hands its jobs over and exits for its supervisor to restart it); read with getattr, as engines
    # that recover by themselves (transformers restarts its generation loop) do not have it.

    def add(self, request: GenerationRequest) -> None: ...
    def prompt_logprobs(
        self, prompt_ids: list[int], top: int
    ) -> list[tuple[float | None, list[tuple[int, float]]]]: ...
    def cancel(self, seq_id: str) -> None: ...
    def poll(self, timeout: float) -> list[SeqUpdate]: ...
    def close(self) -> None: ...
