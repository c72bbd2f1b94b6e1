"""OpenTelemetry tracing, off by default: one trace per request across the API and the worker that served it.

The front server's request span is the parent. Its W3C trace context (``traceparent``, ``tracestate``) travels in
the job (``Job.trace_context``, filled in when the job is made inside a span), and the worker records the job's
life under it once the job ends (see :mod:`workers.tracing`). Export is OTLP over HTTP, configured by the standard
``OTEL_*`` variables; nothing is set up unless ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER`` asks for it.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import propagate, trace
from opentelemetry.context import Context

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def requested() -> bool:
    """Whether the environment asks for traces (the standard variables; ``OTEL_SDK_DISABLED`` wins)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def configure(service_name: str) -> bool:
    """Install a tracer provider exporting OTLP/HTTP when the environment asks for traces; True if it did.
    ``OTEL_SERVICE_NAME`` overrides ``service_name``; the exporter reads its endpoint, headers and timeout from the
    usual variables. Spans are batched (``OTEL_BSP_*``) and flushed when the process exits."""
    if not requested() or enabled():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s: only otlp is supported; exporting OTLP over HTTP", exporter)
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is supported; using it", protocol)
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans of %s over OTLP/HTTP", name)
    return True


def enabled() -> bool:
    """Whether a real tracer provider is installed (here, or by the embedding application or a test)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_context() -> dict[str, str] | None:
    """The W3C headers of the span active now, for a job to carry; None outside any span or with tracing off."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def context_of(carrier: dict[str, str] | None) -> Context:
    """The parent context a job carries (an empty one, a new trace, when it carries none or a malformed one)."""
    return propagate.extract(carrier or {})


def nanoseconds(seconds: float) -> int:
    """A ``time.time()`` reading as OpenTelemetry's timestamps (nanoseconds since the epoch)."""
    return int(seconds * 1e9)
