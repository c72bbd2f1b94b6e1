"""Tracing across processes: a real API process and a real worker process, configured only by the standard
``OTEL_*`` variables, export one request's spans over OTLP/HTTP to a receiver on loopback, in one trace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import free_port, wait_for
from tests.faults.conftest import Cluster

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


class Receiver(ThreadingHTTPServer):
    """OTLP/HTTP's trace endpoint, decoding what exporters send with OpenTelemetry's own protobuf classes."""

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), ReceiverHandler)
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append(
                            ReceivedSpan(
                                service=attributes.get("service.name", ""),
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                            )
                        )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_api_and_worker_processes_export_one_trace(cluster: Cluster, receiver: Receiver) -> None:
    cluster.env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second, not the default 5 s
        }
    )
    cluster.start_worker("worker")
    cluster.wait_workers(1)
    base_url = cluster.start_api()
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": cluster.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        timeout=120,
    )
    assert r.status_code == 200, r.text

    def whole_trace() -> list[ReceivedSpan] | None:
        with receiver.lock:
            spans = [s for s in receiver.spans if s.trace_id == TRACE_ID]
        names = {(s.service, s.name) for s in spans}
        wanted = {("queuechat-worker", f"queuechat.job {cluster.model}"), ("queuechat-api", "queuechat.relay")}
        return spans if wanted <= names else None

    spans = wait_for(whole_trace, timeout=60)
    server = next(s for s in spans if s.service == "queuechat-api" and "/v1/chat/completions" in s.name)
    job = next(s for s in spans if s.name == f"queuechat.job {cluster.model}")
    assert server.parent_span_id == "b7ad6b7169203331"
    assert job.parent_span_id == server.span_id  # the worker's span hangs under the API's, across Redis
    worker_phases = {s.name for s in spans if s.parent_span_id == job.span_id and s.service == "queuechat-worker"}
    assert worker_phases == {"queuechat.wait", "queuechat.admission", "queuechat.prefill", "queuechat.decode"}
