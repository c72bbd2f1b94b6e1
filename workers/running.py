"""A worker's state of the jobs it runs: one per job, one choice per sequence, and the sequence ids that tie
them to the engine's (``{job id}/{choice index}``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from broker.consumer import Delivery
from broker.schemas import Job, TokenLogprob, Usage
from workers.engine import SeqUpdate
from workers.textstream import TextStream


@dataclass
class Choice:
    text: TextStream
    tokens: int = 0
    done: bool = False


@dataclass
class RunningJob:
    delivery: Delivery
    prompt_tokens: int
    choices: list[Choice]
    started: float = field(default_factory=time.time)
    admitted_at: float | None = None  # its sequences put into the engine
    seq: int = 0
    first_token_at: float | None = None
    failed: bool = False
    expired: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None
    reasoning_open: bool = False  # the prompt ended inside a reasoning block (see workers/parsing.py)
    cached_tokens: int | None = None  # of the prompt, found in the engine's prefix cache (engines that tell)
    continued: bool = False  # taken over from a worker that died or stopped, and continued where it left off
    # choices a continuation found complete in their tokens (their end was not published): ended at admission
    ended_at_admission: list[int] = field(default_factory=list)

    @property
    def deadline(self) -> float:
        """On Redis's clock (see :attr:`broker.consumer.Delivery.deadline`)."""
        return self.delivery.deadline

    @property
    def job(self) -> Job:
        return self.delivery.job

    def usage_of(self, choice: Choice) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=choice.tokens, cached_tokens=self.cached_tokens
        )

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    @property
    def finished(self) -> bool:
        return all(c.done for c in self.choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)


def seq_id(job_id: str, index: int) -> str:
    return f"{job_id}/{index}"


def split_seq_id(sid: str) -> tuple[str, int]:
    job_id, _, index = sid.rpartition("/")
    return job_id, int(index)


def merge_updates(earlier: SeqUpdate, later: SeqUpdate) -> SeqUpdate:
    """One update carrying both updates' tokens (and logprobs, when either has them)."""

    def joined(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
        return None if a is None and b is None else (a or []) + (b or [])

    return SeqUpdate(
        seq_id=later.seq_id,
        token_ids=earlier.token_ids + later.token_ids,
        logprobs=joined(earlier.logprobs, later.logprobs),
        top_logprobs=joined(earlier.top_logprobs, later.top_logprobs),
        finished=later.finished,
        error=later.error,
        cached_tokens=earlier.cached_tokens if later.cached_tokens is None else later.cached_tokens,
    )
