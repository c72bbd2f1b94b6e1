"""What a worker serves, by job kind: the backends it was built with, and which of them takes a job.

A worker is built from its backends. The generation engine (workers/engine.py) runs chat and completion jobs
between its decode steps; an answering backend answers the kinds it names while the job is admitted, in one call
(every worker's :class:`Tokens`, an embeddings worker's model: workers/embeddings.py). An embeddings worker has no
engine at all, and a generation worker no embeddings model: a job of a kind none of a worker's backends serves is
refused with a 400 naming what the model does serve. Another kind is served by adding a backend that names it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from broker.errors import InvalidRequest
from broker.schemas import Accepted, Done, Job, JobKind
from workers.admission import check_prompt_bound, detokenized, tokenized
from workers.engine import Engine

log = logging.getLogger(__name__)

GENERATION_KINDS = frozenset({JobKind.CHAT, JobKind.COMPLETION})
# what a model with a generation engine is, in the refusal of a kind it lacks
GENERATES = "generates text"
# how a refusal names a kind a worker does not serve
KIND_NAMES = {
    JobKind.CHAT: "text generation",
    JobKind.COMPLETION: "text generation",
    JobKind.EMBEDDING: "embeddings",
    JobKind.TOKENIZE: "tokenization",
    JobKind.DETOKENIZE: "detokenization",
}


class Answerer(Protocol):
    """A backend that answers its kinds while a job is admitted, in one call: nothing of the job is left running,
    so its answer goes out in the admission's own round trip."""

    @property
    def kinds(self) -> frozenset[JobKind]: ...

    @property
    def max_model_len(self) -> int:
        """The tokens it reads of one input at most (0: no limit of its own)."""
        ...

    @property
    def what(self) -> str:
        """What a model with this backend is ("is an embeddings model"), in the refusal of a kind it lacks; "" for
        the backends every worker has, which say nothing of the model."""
        ...

    def answer(self, job: Job) -> Done:
        """The job's one ``done`` event; a QueuechatError (InvalidRequest, ...) for a job it cannot answer as asked."""
        ...


@dataclass(frozen=True)
class Tokens:
    """Every worker's answering backend: a prompt's token count (or its ids), and the text of token ids, with the
    model's own tokenizer and chat template. A prompt over ``max_chars`` characters is refused untokenised."""

    tokenizer: Any
    chat_template: str | None
    vocab_size: int
    max_chars: int | None
    max_model_len: int  # the model's context, named in that refusal
    kinds: ClassVar[frozenset[JobKind]] = frozenset({JobKind.TOKENIZE, JobKind.DETOKENIZE})
    what: ClassVar[str] = ""

    def answer(self, job: Job) -> Done:
        if job.kind == JobKind.DETOKENIZE:
            return detokenized(job, self.tokenizer, self.vocab_size)
        check_prompt_bound(job, self.max_chars, self.max_model_len)
        return tokenized(job, self.tokenizer, self.chat_template, self.vocab_size)


@dataclass(frozen=True)
class Backends:
    """One worker's backends: ``engine`` for the generation kinds (None: it generates nothing), ``answerers`` for
    the kinds answered at admission. No kind is served twice."""

    engine: Engine | None = None
    answerers: tuple[Answerer, ...] = ()
    kinds: frozenset[JobKind] = field(init=False)

    def __post_init__(self) -> None:
        served: set[JobKind] = set(GENERATION_KINDS) if self.engine is not None else set()
        for answerer in self.answerers:
            if served & answerer.kinds:
                raise ValueError(f"job kinds served twice: {sorted(served & answerer.kinds)}")
            served |= answerer.kinds
        object.__setattr__(self, "kinds", frozenset(served))

    def answerer(self, job: Job) -> Answerer | None:
        """The backend that answers ``job`` while it is admitted, or None: the engine runs it. InvalidRequest (a
        400 error event) when none of this worker's backends serves its kind."""
        for answerer in self.answerers:
            if job.kind in answerer.kinds:
                return answerer
        if self.engine is not None and job.kind in GENERATION_KINDS:
            return None
        what = [GENERATES] if self.engine is not None else []
        what += [a.what for a in self.answerers if a.what]
        name = KIND_NAMES.get(job.kind, f"{job.kind.value} jobs")
        said = f"model {job.model!r} " + "".join(f"{w} and " for w in what)
        raise InvalidRequest(f"{said}does not serve {name}", param="model")

    @property
    def slots(self) -> int:
        """Jobs read at once: the engine's sequences. Without an engine each job is answered within its admission,
        so reading more only makes later ones wait here instead of on another worker."""
        return self.engine.slots if self.engine is not None else 1

    @property
    def max_model_len(self) -> int:
        """The model's context: the engine's, else the longest an answering backend reads."""
        if self.engine is not None:
            return int(self.engine.max_model_len)
        return max((a.max_model_len for a in self.answerers), default=0)

    def with_answerer(self, answerer: Answerer) -> Backends:
        """These backends and ``answerer`` (answering first)."""
        return Backends(self.engine, (answerer, *self.answerers))


def answered(job: Job, answerer: Answerer, worker: str) -> list[Accepted | Done]:
    """A job answered at admission: ``accepted`` then its ``done``, published with the rest of the admission round
    trip, and one log line."""
    started = time.time()
    done = answerer.answer(job)
    prompt_tokens = done.usage.prompt_tokens
    log.info(
        "job %s model=%s %s wait=%.3fs tokens=%d duration=%.3fs",
        job.id, job.model, job.kind.value, started - job.created, prompt_tokens, time.time() - started,
    )  # fmt: skip
    return [Accepted(seq=0, worker=worker, attempt=job.attempt, prompt_tokens=prompt_tokens), done]
