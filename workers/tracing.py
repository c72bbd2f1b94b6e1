"""A job's spans, recorded by the worker once the job has ended, under the trace of the request it came from.

Spans may be recorded after the fact with the times the worker kept anyway (``RunningJob``), so the engine loop
does no tracing work while a job runs: at its end one ``queuechat.job`` span (the wait in the stream and the
work, from the job's making to its last event) and its phases, which follow each other without gaps:

- ``queuechat.wait``: from the front server making the job to this worker admitting it (for a job taken over, the
  earlier attempts too), on the front server's clock at one end and the worker's at the other;
- ``queuechat.admission``: the prompt tokenised (the chat template applied) and its sequences put into the engine;
- ``queuechat.prefill``: until the first token (the engine's queue and the prompt's forward pass);
- ``queuechat.decode``: the remaining tokens, to the job's last event.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from broker import tracing
from workers.running import RunningJob

tracer = trace.get_tracer("queuechat.worker")


def record_job(running: RunningJob, outcome: str, worker: str, ended: float | None = None) -> None:
    """The spans of a generation job that ended with ``outcome`` (completed, cancelled, failed, expired)."""
    if not tracing.enabled():
        return
    ended = time.time() if ended is None else ended
    job = running.job
    created = min(job.created, running.started)  # another host's clock may run ahead of this one
    admitted = running.admitted_at or running.started
    first = running.first_token_at or ended
    span = tracer.start_span(
        f"queuechat.job {job.model}",
        context=tracing.context_of(job.trace_context),
        kind=SpanKind.CONSUMER,
        start_time=tracing.nanoseconds(created),
        attributes={
            "queuechat.job.id": job.id,
            "queuechat.job.kind": job.kind.value,
            "queuechat.job.attempt": job.attempt,
            "queuechat.request.id": job.request_id or "",
            "queuechat.worker": worker,
            "queuechat.outcome": outcome,
            "gen_ai.request.model": job.model,
            "gen_ai.usage.input_tokens": running.prompt_tokens,
            "gen_ai.usage.output_tokens": running.completion_tokens,
        },
    )
    if outcome == "failed":
        span.set_status(Status(StatusCode.ERROR, "the engine failed on the job"))
    parent = trace.set_span_in_context(span)
    phases = [
        ("queuechat.wait", created, running.started),
        ("queuechat.admission", running.started, admitted),
        ("queuechat.prefill", admitted, max(first, admitted)),
        ("queuechat.decode", max(first, admitted), ended),
    ]
    for name, start, end in phases:
        phase = tracer.start_span(name, context=parent, start_time=tracing.nanoseconds(start))
        phase.end(end_time=tracing.nanoseconds(max(end, start)))
    span.end(end_time=tracing.nanoseconds(ended))
