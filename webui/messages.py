"""What a person reads when a reply cannot be given, phrased so they know what to do next.

FastChat answers every failure with "NETWORK ERROR DUE TO HIGH TRAFFIC"; here each broker error says what
happened to *this* request: nobody serves the model, the queue is full (and for how long), the worker died.
"""

from __future__ import annotations

from broker.errors import (
    BrokerUnavailable,
    JobFailed,
    ModelNotFound,
    NoWorkerAvailable,
    QueuechatError,
    QueueFull,
    RequestTimedOut,
)


def describe(exc: QueuechatError, model: str) -> str:
    """One or two sentences for the chat window."""
    if isinstance(exc, NoWorkerAvailable):
        return (
            f"No worker is serving {model} right now. Pick another model, or start one with "
            f"`queuechat worker --model-names {model} …` and send again."
        )
    if isinstance(exc, ModelNotFound):
        return f"The model {model} is not served here. Press ↻ to refresh the list of models."
    if isinstance(exc, QueueFull):
        return f"The queue of {model} is full. Retry in {exc.retry_after} s."
    if isinstance(exc, BrokerUnavailable):
        return "The message broker (Redis) cannot be reached. Retry in a few seconds; nothing was lost on your side."
    if isinstance(exc, RequestTimedOut):
        return f"{model} did not finish in time. Press Regenerate to try again, or ask for fewer output tokens."
    if isinstance(exc, JobFailed):
        if exc.code == "worker_lost":
            return (
                "The worker was lost mid-answer; the partial answer is kept above. "
                "Press Regenerate to ask again (another worker takes over if one is running)."
            )
        if exc.code == "context_length_exceeded":
            return (
                f"The conversation no longer fits in {model}'s context. "
                "Press Clear to start a new one, or lower the maximum output tokens."
            )
        if exc.code in ("event_gap", "events_lost"):
            return "Part of the answer was lost on the way (the broker lost it). Press Regenerate."
        return f"{model} could not answer: {exc.message}"
    return exc.message


def too_long(length: int, limit: int) -> str:
    return f"Your message has {length:,} characters; the limit is {limit:,}. Shorten it and send again."


def too_many_turns(limit: int) -> str:
    return f"This conversation reached {limit} turns. Press Clear to start a new one."
