"""Building blocks for the tests of the worker's pure parts (triage, relay, outcomes): jobs as read from a stream,
their logs, running jobs, and a small real BPE tokenizer (no model, no Redis)."""

from __future__ import annotations

from typing import Any

from broker.consumer import Delivery
from broker.eventlog import JobLog
from broker.schemas import Delta, Done, Error, FinishReason, Job, JobKind, SamplingParams, Usage
from workers.running import Choice, RunningJob
from workers.textstream import TextStream

QUEUED_AT = 1_000.0  # the entries' time on Redis's clock (their ids' milliseconds)
BUDGET = 30.0  # each job's time budget: its deadline is QUEUED_AT + BUDGET


def tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["Redis streams carry jobs; workers read them. STOP here."] * 10, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>")


def delivery(
    job_id: str, *, n: int = 1, attempt: int = 1, kind: JobKind = JobKind.COMPLETION, **params: Any
) -> Delivery:
    job = Job(
        id=job_id,
        kind=kind,
        model="tiny",
        prompt="hello",
        params=SamplingParams(n=n, **params),
        created=0.0,
        deadline=BUDGET,
        attempt=attempt,
    )
    return Delivery(stream="q:jobs:tiny", entry_id=f"{int(QUEUED_AT * 1000)}-0", job=job)


def log_of(*events: Delta | Done | Error, whole: bool = True) -> JobLog:
    return JobLog(meta={"job": "..."} if whole else None, events=list(events))


def done(seq: int, index: int = 0, tokens: int = 1) -> Done:
    return Done(seq=seq, index=index, finish_reason=FinishReason.LENGTH, usage=Usage(completion_tokens=tokens))


def running(tok: Any, item: Delivery, *, stop: tuple[str, ...] = (), end_ids: tuple[int, ...] = ()) -> RunningJob:
    choices = [Choice(TextStream(tok, stop, end_ids)) for _ in range(item.job.params.n)]
    return RunningJob(delivery=item, prompt_tokens=3, choices=choices, started=QUEUED_AT)
