"""The generation backend as the consume loop drives it: a job's sequences into the engine, and what each job
holds of it.

Starting a job is the admission work of a generation job: its prompt's token ids, one text stream and one engine
request per choice, and for a job taken over from another worker, each choice going on from the tokens its client
has (see ``continued_requests``). A job's choices enter the engine as its share allows (see ``Share``); the others
wait here and enter as its earlier ones leave. No Redis and no clock: the consume loop (workers/service.py) reads,
publishes and acknowledges around it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from broker.consumer import Delivery
from broker.errors import InvalidRequest
from broker.eventlog import JobLog
from broker.schemas import JobKind, TokenLogprob
from workers.admission import (
    MAX_PROMPT_LOGPROBS_TOKENS,
    Share,
    continued_requests,
    generation_requests,
    max_new_tokens,
    prompt_ids_of,
)
from workers.engine import Engine, GenerationRequest, SeqUpdate
from workers.parsing import OutputParsers
from workers.running import Choice, RunningJob, seq_id
from workers.textstream import TextStream
from workers.token_text import TokenLogprobs

log = logging.getLogger(__name__)


class Generation:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        *,
        chat_template: str | None,
        parsers: OutputParsers,
        vocab_size: int,
        max_prompt_chars: int | None,
        max_tokens_cap: int | None,
        logprobs: TokenLogprobs,
        restart_log: Callable[[str, JobLog], None],
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.parsers = parsers
        self.vocab_size = vocab_size
        self.max_prompt_chars = max_prompt_chars
        self.max_tokens_cap = max_tokens_cap
        self._logprobs = logprobs
        self._restart_log = restart_log  # a taken-over job's log that cannot be continued starts over
        self.share = Share.of(engine)
        # per job, the engine requests of its choices waiting for their share (see Share), and what it holds now
        self._waiting: dict[str, deque[GenerationRequest]] = {}
        self._holding: dict[str, tuple[int, int]] = {}
        self._costs: dict[str, int] = {}  # seq id -> the tokens its engine request reserves

    def start(self, delivery: Delivery, past: JobLog | None = None) -> RunningJob:
        """Put a job's sequences into the engine. With ``past`` (the log of a job taken over from another worker)
        each choice goes on from the tokens its client has: the prompt plus those tokens, the remaining
        ``max_tokens``, the text stream primed with them and the seed moved on (see ``continuation_seed``)."""
        job, engine = delivery.job, self.engine
        prompt_ids = prompt_ids_of(
            job, self.tokenizer, self.chat_template, self.vocab_size, self.max_prompt_chars, engine.max_model_len
        )
        max_new = max_new_tokens(job, len(prompt_ids), engine.max_model_len, self.max_tokens_cap)
        params = job.params
        end_ids = (set() if params.ignore_eos else set(engine.eos_token_ids)) | set(params.stop_token_ids)
        skip = not self.parsers.keeps_special_tokens(job)
        choices = [
            Choice(
                TextStream(
                    self.tokenizer,
                    params.stop,
                    end_ids,
                    skip_special_tokens=skip,
                    stop_token_ids=params.stop_token_ids,
                    min_tokens=params.min_tokens,
                    include_stop=params.include_stop_str_in_output,
                )
            )
            for _ in range(params.n)
        ]
        running = RunningJob(delivery=delivery, prompt_tokens=len(prompt_ids), choices=choices)
        if job.kind == JobKind.CHAT:
            running.reasoning_open = self.parsers.reasoning_open(self.tokenizer, prompt_ids)
        requests = generation_requests(job, prompt_ids, max_new, engine.sampling_defaults)
        if past is not None and past.exists:
            if past.whole and (engine.continues_grammars or not params.constrained):
                running.continued = True
                running.seq = past.next_seq
            else:
                # A log without its beginning is not the whole story, and an engine that cannot start a grammar past
                # the tokens sent (vLLM) would constrain the rest from the grammar's start: run the job again from
                # the start (a stream that already showed text then fails).
                log.warning("job %s runs again from its start (its log cannot be continued)", job.id)
                self._restart_log(job.id, past)
        if params.prompt_logprobs and not running.continued:
            running.prompt_logprobs = self._prompt_logprobs(prompt_ids, params.top_logprobs)
        to_run = continued_requests(running, requests, past) if running.continued and past is not None else requests
        self._enter(job.id, to_run)
        if running.continued:
            log.info("job %s continued from seq %d (attempt %d)", job.id, running.seq, job.attempt)
        running.admitted_at = time.time()
        return running

    def _enter(self, job_id: str, requests: list[GenerationRequest]) -> None:
        """Put into the engine what the job's share allows of ``requests``; the rest wait (see Share)."""
        held, reserved = self._holding.get(job_id, (0, 0))
        now, later = self.share.split(requests, held, reserved)
        for request in now:
            self.engine.add(request)
            cost = len(request.prompt_ids) + request.max_new_tokens
            self._costs[request.seq_id] = cost
            held, reserved = held + 1, reserved + cost
        self._holding[job_id] = (held, reserved)
        if later:
            self._waiting[job_id] = deque(later)

    def choice_left(self, job_id: str, index: int, running: RunningJob | None) -> None:
        """A choice of the job left the engine: what it reserved goes back to the job's share, and the job's next
        waiting choices enter (``running``: the job, None once it no longer runs here)."""
        held, reserved = self._holding.get(job_id, (0, 0))
        self._holding[job_id] = (max(0, held - 1), max(0, reserved - self._costs.pop(seq_id(job_id, index), 0)))
        waiting = self._waiting.pop(job_id, None)
        if waiting and running is not None and not running.finished:
            self._enter(job_id, list(waiting))

    def forget(self, running: RunningJob) -> None:
        """The job ended here: its waiting choices never start, and it holds nothing of the engine any more."""
        job_id = running.job.id
        self._waiting.pop(job_id, None)
        self._holding.pop(job_id, None)
        for index in range(len(running.choices)):
            self._costs.pop(seq_id(job_id, index), None)

    def cancel_all(self, running: RunningJob) -> None:
        """End every choice of the job still in the engine, and forget what it held."""
        self.forget(running)
        for index, choice in enumerate(running.choices):
            if not choice.done:
                self.engine.cancel(seq_id(running.job.id, index))
                choice.done = True

    def cancel(self, sid: str) -> None:
        self.engine.cancel(sid)

    def poll(self, timeout: float) -> list[SeqUpdate]:
        return self.engine.poll(timeout=timeout)

    def _prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[TokenLogprob]:
        if len(prompt_ids) > MAX_PROMPT_LOGPROBS_TOKENS:
            raise InvalidRequest(
                f"prompt logprobs (echo with logprobs) are limited to prompts of {MAX_PROMPT_LOGPROBS_TOKENS} tokens",
                param="echo",
            )
        return self._logprobs.of_prompt(prompt_ids, self.engine.prompt_logprobs(prompt_ids, top))
