"""What a route takes from its app and its request: the process's producer, the request id, the job observers."""

from __future__ import annotations

from fastapi import Request

from api.requestid import record_of
from api.requestid import request_id_of as _request_id_of
from broker.producer import Producer
from serving.jobs import JobObserver, Observers


def producer_of(request: Request) -> Producer:
    producer: Producer = request.app.state.producer
    return producer


def request_id_of(request: Request) -> str | None:
    return _request_id_of(request.scope)


def request_log_of(request: Request, model: str | None = None) -> JobObserver | None:
    """The request's log record, told which model the request is for."""
    record = record_of(request.scope)
    if record is not None and model is not None:
        record.model = model
    return record


def observer_of(request: Request, model: str | None = None) -> JobObserver:
    """The metrics and the request's log line, which watch a generation request's jobs."""
    return Observers(request.app.state.metrics, request_log_of(request, model))
