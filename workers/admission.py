"""What a worker makes of a job it has read: the prompt's token ids, the engine's requests (one per choice), or,
for the jobs that need no engine step (a token count, an embeddings worker's vectors), the answer itself; and the
error event of a job the engine failed on."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from broker.schemas import Accepted, Delta, Done, Error, FinishReason, Job, JobKind, Usage
from workers.engine import GenerationRequest, SamplingDefaults
from workers.grammar import json_grammar
from workers.prompts import PromptError, chat_prompt_ids, completion_prompt_ids
from workers.running import seq_id

log = logging.getLogger(__name__)

AnyEvent = Accepted | Delta | Done | Error
# job kinds every worker answers while admitting them, without the engine
ANSWERED_AT_ADMISSION = frozenset({JobKind.TOKENIZE, JobKind.EMBEDDING})
# Scoring a prompt takes one forward pass outside the batch, with logits of the whole prompt in memory.
MAX_PROMPT_LOGPROBS_TOKENS = 4096
# A continued choice's seed moves on by this much per token already sent (2**64 / golden ratio: consecutive
# counts land far apart), modulo 2**64.
CONTINUATION_SEED_STEP = 0x9E3779B97F4A7C15


class Embedder(Protocol):
    def embed(self, inputs: list[str] | list[list[int]], dimensions: int | None) -> tuple[list[str], int]:
        """Base64 little-endian float32 vectors, one per input, and the tokens read; PromptError for bad input."""
        ...


def engine_error(seq: int, exc: BaseException | None = None, message: str | None = None) -> Error:
    """The error event for a job the engine failed on. Out-of-memory is named as such (FastChat's 50002), since
    the client's remedy differs: a shorter request, or a retry once the worker has room again."""
    text = message if message is not None else f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return Error(seq=seq, code="out_of_memory", message=f"the worker ran out of memory: {text}", status=503)
    return Error(seq=seq, code="engine_error", message=text, status=500)


def prompt_ids_of(job: Job, tokenizer: Any, chat_template: str | None, vocab_size: int) -> list[int]:
    """The token ids a generation job's prompt (or messages, through the chat template) comes to."""
    if job.kind == JobKind.CHAT:
        prompt_ids = chat_prompt_ids(tokenizer, job.messages or [], chat_template, job.tools)
    else:
        prompt_ids = completion_prompt_ids(tokenizer, job.prompt or "", vocab_size)
    if not prompt_ids:
        raise PromptError("the prompt is empty")
    check_stop_token_ids(job, vocab_size)
    return prompt_ids


def check_stop_token_ids(job: Job, vocab_size: int) -> None:
    """400 for a stop token id the model cannot generate (vLLM's answer). Checked here, not in the API: only the
    worker knows the model's vocabulary, and a job that fails at admission costs no engine step."""
    bad = next((t for t in job.params.stop_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise PromptError(
            f"stop_token_ids contains {bad}, which is outside this model's vocabulary (0..{vocab_size - 1})",
            param="stop_token_ids",
        )


def max_new_tokens(job: Job, prompt_tokens: int, limit: int) -> int:
    """How many tokens the job may generate within the engine's ``limit``; OpenAI's error when it asks for more."""
    room = limit - prompt_tokens
    wanted = job.params.max_tokens
    if room < 1 or (wanted is not None and wanted > room):
        raise PromptError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + (wanted or 1)} tokens ({prompt_tokens} in the messages, "
            f"{wanted or 1} in the completion). Please reduce the length of the messages or completion.",
            code="context_length_exceeded",
            param="messages" if job.kind == JobKind.CHAT else "prompt",
        )
    return wanted or room


def generation_requests(
    job: Job, prompt_ids: list[int], max_new: int, defaults: SamplingDefaults
) -> list[GenerationRequest]:
    """One engine request per choice; parameters the job leaves out take the model's defaults."""
    params = job.params
    grammar = json_grammar(params.json_schema) if params.json_schema is not None else None
    return [
        GenerationRequest(
            seq_id=seq_id(job.id, index),
            prompt_ids=prompt_ids,
            max_new_tokens=max_new,
            temperature=defaults.temperature if params.temperature is None else params.temperature,
            top_p=defaults.top_p if params.top_p is None else params.top_p,
            top_k=defaults.top_k if params.top_k is None else params.top_k,
            stop_token_ids=params.stop_token_ids,
            # each choice of a seeded request gets its own stream of randomness
            seed=None if params.seed is None else params.seed + index,
            logprobs=params.top_logprobs if params.logprobs else None,
            penalties=(params.repetition_penalty, params.presence_penalty, params.frequency_penalty),
            grammar=grammar,
        )
        for index in range(params.n)
    ]


def continuation_seed(seed: int | None, sent: int) -> int | None:
    """The seed of a choice continued by another worker after ``sent`` tokens: ``(seed + sent * STEP) mod 2**64``,
    where ``seed`` is the choice's own (the request's seed plus the choice's index). The same seed continued after
    the same number of tokens draws the same tokens; unseeded choices stay unseeded."""
    if seed is None or sent == 0:
        return seed
    return (seed + sent * CONTINUATION_SEED_STEP) % 2**64


def answer_now(
    job: Job, worker: str, tokenizer: Any, chat_template: str | None, vocab_size: int, embedder: Embedder | None
) -> list[AnyEvent]:
    """Jobs that need no engine step: a token count, or the embeddings of an embeddings worker. Their events are
    ``accepted`` then ``done``, published with the rest of the admission round trip."""
    started = time.time()
    vectors: list[str] | None = None
    if job.kind == JobKind.TOKENIZE:
        if job.messages is not None:
            prompt_tokens = len(chat_prompt_ids(tokenizer, job.messages, chat_template, job.tools))
        else:
            prompt_tokens = len(completion_prompt_ids(tokenizer, job.prompt or "", vocab_size))
    elif job.kind == JobKind.EMBEDDING:
        if embedder is None:
            raise PromptError(f"model {job.model!r} generates text and does not serve embeddings", param="model")
        vectors, prompt_tokens = embedder.embed(job.inputs or [], job.dimensions)
    else:
        raise PromptError(
            f"model {job.model!r} is an embeddings model: it serves /v1/embeddings, not text generation",
            param="model",
        )
    log.info(
        "job %s model=%s %s wait=%.3fs tokens=%d duration=%.3fs",
        job.id, job.model, job.kind.value, started - job.created, prompt_tokens, time.time() - started,
    )  # fmt: skip
    accepted = Accepted(seq=0, worker=worker, attempt=job.attempt, prompt_tokens=prompt_tokens)
    usage = Usage(prompt_tokens=prompt_tokens)
    return [accepted, Done(seq=1, finish_reason=FinishReason.STOP, usage=usage, embeddings=vectors)]
