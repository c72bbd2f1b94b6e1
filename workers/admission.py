"""What a worker makes of a job it has read: the prompt's token ids, the engine's requests (one per choice), or,
for a token count or a detokenization (no engine step: see workers/backends.py), the answer itself; and the error
of a job the engine failed on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.errors import ContextLengthExceeded, EngineFailed, InvalidRequest, OutOfMemory
from broker.eventlog import JobLog
from broker.schemas import Accepted, ChatOptions, Delta, Done, Error, FinishReason, Job, JobKind, Usage
from serving.prompt_size import text_chars
from workers.engine import GenerationRequest, SamplingDefaults, is_out_of_memory
from workers.grammar import grammar_of
from workers.prompts import chat_prompt_ids, check_prompt_chars, completion_prompt_ids
from workers.running import RunningJob, seq_id

AnyEvent = Accepted | Delta | Done | Error
# Scoring a prompt takes one forward pass outside the batch, with logits of the whole prompt in memory.
MAX_PROMPT_LOGPROBS_TOKENS = 4096
# A continued choice's seed moves on by this much per token already sent (2**64 / golden ratio: consecutive
# counts land far apart), modulo 2**64.
CONTINUATION_SEED_STEP = 0x9E3779B97F4A7C15


def engine_failure(exc: BaseException | None = None, message: str | None = None) -> EngineFailed:
    """What a job the engine failed on (``exc``, or the engine's own ``message``) fails with: out-of-memory named as
    such, since the client's remedy differs."""
    text = message if message is not None else f"{type(exc).__name__}: {exc}"
    if is_out_of_memory(exc, text):
        return OutOfMemory(f"the worker ran out of memory: {text}")
    return EngineFailed(text)


def check_prompt_bound(job: Job, max_chars: int | None, limit: int) -> None:
    """Refuse a prompt too long to fit before tokenising any of it (``max_chars``: see ``longest_token_chars``)."""
    if not max_chars:
        return
    if job.messages is not None:
        check_prompt_chars(text_chars(job.messages) + text_chars(job.tools), max_chars, limit, "messages")
    elif isinstance(job.prompt, str):
        check_prompt_chars(len(job.prompt), max_chars, limit, "prompt")


def prompt_ids_of(
    job: Job, tokenizer: Any, chat_template: str | None, vocab_size: int, max_chars: int | None = None, limit: int = 0
) -> list[int]:
    """The token ids a generation job's prompt (or messages, through the chat template) comes to; a prompt over
    ``max_chars`` characters is refused untokenised."""
    check_prompt_bound(job, max_chars, limit)
    if job.kind == JobKind.CHAT:
        options = job.chat_options or ChatOptions()
        prompt_ids = chat_prompt_ids(
            tokenizer,
            job.messages or [],
            chat_template,
            job.tools,
            add_generation_prompt=options.add_generation_prompt,
            continue_final_message=options.continue_final_message,
            template_kwargs=options.template_kwargs,
        )
    else:
        prompt_ids = completion_prompt_ids(tokenizer, job.prompt or "", vocab_size)
    if not prompt_ids:
        raise InvalidRequest("the prompt is empty")
    check_token_ids(job, vocab_size)
    return prompt_ids


def check_token_ids(job: Job, vocab_size: int) -> None:
    """400 for a token id in the parameters that the model cannot generate (vLLM's answer). Checked here, not in
    the API: only the worker knows the model's vocabulary, and a job that fails at admission costs no engine step."""
    params = job.params
    named = {
        "stop_token_ids": params.stop_token_ids,
        "allowed_token_ids": params.allowed_token_ids or [],
        "logit_bias": list(params.logit_bias or {}),
    }
    for param, ids in named.items():
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"{param} contains {bad}, which is outside this model's vocabulary (0..{vocab_size - 1})", param=param
            )


def max_new_tokens(job: Job, prompt_tokens: int, limit: int, cap: int | None = None) -> int:
    """How many tokens the job may generate within the engine's ``limit``: what it asked for, else the rest of the
    context, at most ``cap`` (QUEUECHAT_MAX_TOKENS_CAP). OpenAI's errors when it asks for more than either: the
    client asked for something it will not get, and a silently shortened answer would look like the model's own."""
    room = limit - prompt_tokens
    wanted = job.params.max_tokens
    if room < 1 or (wanted is not None and wanted > room):
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + (wanted or 1)} tokens ({prompt_tokens} in the messages, "
            f"{wanted or 1} in the completion). Please reduce the length of the messages or completion.",
            param="messages" if job.kind == JobKind.CHAT else "prompt",
        )
    if cap is not None and wanted is not None and wanted > cap:
        raise InvalidRequest(
            f"max_tokens is too large: {wanted}. This server generates at most {cap} tokens per choice.",
            param="max_tokens",
        )
    if wanted is not None:
        return wanted
    return room if cap is None else min(room, cap)


def generation_requests(
    job: Job, prompt_ids: list[int], max_new: int, defaults: SamplingDefaults
) -> list[GenerationRequest]:
    """One engine request per choice; parameters the job leaves out take the model's defaults."""
    params = job.params
    grammar = grammar_of(params.json_schema, params.regex, params.choice)
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
            ignore_eos=params.ignore_eos,
            min_tokens=params.min_tokens,
            logit_bias=dict(params.logit_bias) if params.logit_bias else None,
            allowed_token_ids=list(params.allowed_token_ids) if params.allowed_token_ids else None,
        )
        for index in range(params.n)
    ]


@dataclass(frozen=True)
class Share:
    """What one job may hold of its engine at once: at most ``sequences`` sequences reserving at most ``tokens``
    (each prompt plus its max_new_tokens), its first sequence always. The rest of its choices wait in the worker and
    enter as its own earlier ones finish, so a job of many long choices (n=16 at full context) leaves room for the
    jobs that come after it instead of filling the engine's queue ahead of them until its deadline."""

    sequences: int
    tokens: int

    @classmethod
    def of(cls, engine: Any) -> Share:
        """Half of the engine's sequences and of its KV cache (``cache_tokens`` where the engine tells it, else a
        full context per sequence), at least one sequence of a whole context."""
        slots = max(1, int(engine.slots))
        limit = int(engine.max_model_len)
        cache = int(getattr(engine, "cache_tokens", 0) or limit * slots)
        return cls(sequences=max(1, slots // 2), tokens=max(limit, cache // 2))

    def split(
        self, requests: list[GenerationRequest], held: int = 0, reserved: int = 0
    ) -> tuple[list[GenerationRequest], list[GenerationRequest]]:
        """(what may enter the engine now, what waits) of a job's ``requests``, given that it already holds
        ``held`` sequences reserving ``reserved`` tokens."""
        now: list[GenerationRequest] = []
        for index, request in enumerate(requests):
            cost = len(request.prompt_ids) + request.max_new_tokens
            if held and (held >= self.sequences or reserved + cost > self.tokens):
                return now, requests[index:]
            now.append(request)
            held, reserved = held + 1, reserved + cost
        return now, []


def continuation_seed(seed: int | None, sent: int) -> int | None:
    """The seed of a choice continued by another worker after ``sent`` tokens: ``(seed + sent * STEP) mod 2**64``,
    where ``seed`` is the choice's own (the request's seed plus the choice's index). The same seed continued after
    the same number of tokens draws the same tokens; unseeded choices stay unseeded."""
    if seed is None or sent == 0:
        return seed
    return (seed + sent * CONTINUATION_SEED_STEP) % 2**64


def continued_requests(running: RunningJob, requests: list[GenerationRequest], past: JobLog) -> list[GenerationRequest]:
    """Of a continued job's engine requests (one per choice, from its prompt), those still to run, each going on from
    the tokens its client has (``past``): the prompt plus those tokens, the remaining ``max_new_tokens``, the seed
    moved on, its grammar (if any) advanced through them, its text stream primed with them. A choice whose end is in
    the log is done; one complete in its tokens (out of tokens, or stopped) ends at admission
    (``running.ended_at_admission``)."""
    to_run: list[GenerationRequest] = []
    for index, (choice, request) in enumerate(zip(running.choices, requests, strict=True)):
        done = past.done(index)
        if done is not None:
            choice.done, choice.tokens = True, done.usage.completion_tokens
            continue
        sent = past.tokens(index)
        choice.text.feed(sent)  # the text the client has, and what is held back of it
        choice.tokens = len(sent)
        request.prompt_ids = request.prompt_ids + sent
        request.max_new_tokens = request.max_new_tokens - len(sent)
        request.seed = continuation_seed(request.seed, len(sent))
        if request.grammar is not None:
            request.grammar_prefix = list(sent)  # the grammar goes on from the tokens the client has
        if request.max_new_tokens <= 0 or choice.text.stopped or choice.text.ended_by_token:
            running.ended_at_admission.append(index)
            continue
        to_run.append(request)
    return to_run


def tokenized(job: Job, tokenizer: Any, chat_template: str | None, vocab_size: int) -> Done:
    """A tokenize job's answer: the count, and with ``token_options`` the ids (and their token strings)."""
    options = job.token_options
    if job.messages is not None:
        opens_turn = options.add_generation_prompt if options else True
        ids = chat_prompt_ids(tokenizer, job.messages, chat_template, job.tools, add_generation_prompt=opens_turn)
    else:
        specials = options.add_special_tokens if options else True
        ids = completion_prompt_ids(tokenizer, job.prompt or "", vocab_size, add_special_tokens=specials)
    done = Done(seq=1, finish_reason=FinishReason.STOP, usage=Usage(prompt_tokens=len(ids)))
    if options is not None:
        done.token_ids = ids
        if options.token_strs:
            done.token_strs = [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    return done


def detokenized(job: Job, tokenizer: Any, vocab_size: int) -> Done:
    """A detokenize job's answer: the text of its ids, special tokens included as the tokenizer writes them."""
    ids = job.prompt if isinstance(job.prompt, list) else []
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is outside this model's vocabulary (0..{vocab_size - 1})", param="tokens")
    text = str(tokenizer.decode(ids))
    return Done(seq=1, finish_reason=FinishReason.STOP, usage=Usage(prompt_tokens=len(ids)), text=text)
