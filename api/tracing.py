"""The API's part of a request's trace: the request span (OpenTelemetry's FastAPI instrumentation), which every
job made while it is active carries to its worker (see :mod:`broker.tracing`), and one ``queuechat.relay`` span
per job, from its first event's arrival here to its last: the time spent passing a worker's events on."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

from fastapi import FastAPI
from opentelemetry import trace

from broker import tracing
from broker.jobevents import JobEvents
from broker.schemas import AnyEvent, Done, Error

tracer = trace.get_tracer("queuechat.api")


def instrument(app: FastAPI) -> None:
    """Request spans for every route, when tracing is on: continuing a client's ``traceparent`` (a malformed one
    starts a new trace, as W3C Trace Context says), without a span per ASGI message of a stream."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/health,/metrics", exclude_spans=["receive", "send"])


@dataclass
class _Relay:
    started: float
    choices_left: int


class RelaySpans:
    """A job observer (see :class:`serving.jobs.JobObserver`) recording each job's relay span at its last event.
    A job whose client left before its end records none."""

    def __init__(self) -> None:
        self._open: weakref.WeakKeyDictionary[JobEvents, _Relay] = weakref.WeakKeyDictionary()

    def job_submitted(self, events: JobEvents, submitted: float) -> None:
        pass

    def job_event(self, events: JobEvents, event: AnyEvent) -> None:
        if not tracing.enabled():
            return
        now = time.time()
        relay = self._open.setdefault(events, _Relay(started=now, choices_left=events.job.params.n))
        if isinstance(event, Done):
            relay.choices_left -= 1
        if relay.choices_left > 0 and not isinstance(event, Error):
            return
        del self._open[events]
        span = tracer.start_span(
            "queuechat.relay",
            context=tracing.context_of(events.job.trace_context),
            start_time=tracing.nanoseconds(relay.started),
            attributes={"queuechat.job.id": events.job.id, "gen_ai.request.model": events.job.model},
        )
        span.end(end_time=tracing.nanoseconds(now))
