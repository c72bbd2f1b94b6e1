"""Tracing: a request's spans in one trace, from the API's request span through the worker's wait, admission,
prefill and decode to the relay back, exported here to OpenTelemetry's in-memory exporter (the fault suite
exports to a real OTLP receiver across processes, tests/faults/test_tracing_otlp.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import Stack, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
MESSAGES = [{"role": "user", "content": "Hello there"}]
PHASES = ["queuechat.wait", "queuechat.admission", "queuechat.prefill", "queuechat.decode"]


def test_no_trace_context_travels_without_tracing() -> None:
    """With no tracer provider (tracing off, the default), jobs carry nothing extra. First in this module: the
    fixture below installs one for the rest of the process."""
    from broker import tracing
    from broker.schemas import Job, JobKind

    if tracing.enabled():
        pytest.skip("a tracer provider is installed in this process")
    assert Job(kind=JobKind.CHAT, model="m", messages=MESSAGES, deadline=0).trace_context is None


@pytest.fixture(scope="module")
def exported() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider, installed before this module's API and worker start (a process has one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider was installed in this process first")
    yield exporter
    provider.shutdown()  # the rest of the session records nothing


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    """The spans of one trace by name, once the worker's and the relay's are in (they end after the response)."""

    def complete() -> dict[str, ReadableSpan] | None:
        spans = {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
        wanted = {"queuechat.job tiny", "queuechat.relay", *PHASES}
        server = [s for s in spans.values() if s.kind == SpanKind.SERVER]
        return spans if wanted <= set(spans) and server else None

    spans: dict[str, ReadableSpan] = wait_for(complete, timeout=30)
    return spans


def server_span(spans: dict[str, ReadableSpan]) -> ReadableSpan:
    return next(s for s in spans.values() if s.kind == SpanKind.SERVER)


@pytest.mark.parametrize("stream", [False, True])
def test_one_trace_from_the_request_through_the_worker(
    exported: InMemorySpanExporter, stack: Stack, stream: bool
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    spans = trace_of(exported, int(TRACE_ID, 16))
    exported.clear()

    server, job = server_span(spans), spans["queuechat.job tiny"]
    assert "/v1/chat/completions" in server.name
    assert server.parent is not None and server.parent.span_id == int(CLIENT_SPAN, 16)  # the client's span
    assert job.parent is not None and job.parent.span_id == server.context.span_id
    assert job.kind == SpanKind.CONSUMER
    relay = spans["queuechat.relay"]
    assert relay.parent is not None and relay.parent.span_id == server.context.span_id
    phases = [spans[name] for name in PHASES]
    assert all(p.parent is not None and p.parent.span_id == job.context.span_id for p in phases)
    # the wait and the work follow each other without gaps and make up the job, which began in the request
    assert phases[0].start_time == job.start_time and phases[-1].end_time == job.end_time
    for earlier, later in itertools.pairwise(phases):
        assert earlier.end_time == later.start_time
    assert server.start_time is not None and job.start_time is not None and server.end_time is not None
    assert server.start_time <= job.start_time
    assert phases[2].end_time is not None and phases[2].end_time <= server.end_time  # first token before the end
    attributes = dict(job.attributes or {})
    assert attributes["queuechat.outcome"] == "completed"
    assert attributes["queuechat.request.id"] == r.headers["x-request-id"]
    output_tokens = attributes["gen_ai.usage.output_tokens"]
    assert isinstance(output_tokens, int) and output_tokens > 0


def test_a_malformed_traceparent_starts_a_new_trace(exported: InMemorySpanExporter, stack: Stack) -> None:
    r = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2},
        headers={"traceparent": "00-not-a-trace-id-01"},
        timeout=60,
    )
    assert r.status_code == 200, r.text

    def new_trace() -> dict[str, ReadableSpan] | None:
        for span in exported.get_finished_spans():
            if span.name == "queuechat.job tiny":
                spans = {
                    s.name: s for s in exported.get_finished_spans() if s.context.trace_id == span.context.trace_id
                }
                if any(s.kind == SpanKind.SERVER for s in spans.values()):
                    return spans
        return None

    spans = wait_for(new_trace, timeout=30)
    exported.clear()
    assert server_span(spans).parent is None  # a trace of its own, not a failed request
