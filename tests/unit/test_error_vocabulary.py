"""One error vocabulary on both sides of Redis: a worker's exception becomes an ``error`` event with its status,
code and param, and the front end raises that event again as a JobFailed of the same status, code, param and type."""

from __future__ import annotations

import pytest

from broker.errors import (
    WORKER_ERRORS,
    ContextLengthExceeded,
    EngineFailed,
    InvalidJob,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    OutOfMemory,
    QueuechatError,
)
from broker.schemas import Error, error_event, job_failure, parse_event

# the wire format workers have always sent (codes and statuses that front servers and clients rely on)
WIRE = {
    InvalidRequest: ("invalid_request", 400, "invalid_request_error"),
    ContextLengthExceeded: ("context_length_exceeded", 400, "invalid_request_error"),
    InvalidJob: ("invalid_job", 400, "invalid_request_error"),
    JobCancelled: ("cancelled", 409, "invalid_request_error"),
    JobTimedOut: ("timeout", 504, "server_error"),
    EngineFailed: ("engine_error", 500, "server_error"),
    OutOfMemory: ("out_of_memory", 503, "server_error"),
}


@pytest.mark.parametrize("cls", list(WIRE))
def test_an_exception_goes_over_redis_and_comes_back_the_same(cls: type[QueuechatError]) -> None:
    code, status, kind = WIRE[cls]
    assert WORKER_ERRORS[code] is cls
    event = error_event(cls("it went wrong", param="prompt"), seq=3)
    assert event == Error(seq=3, code=code, message="it went wrong", status=status, param="prompt")
    again = job_failure(parse_event(event.model_dump_json()))
    assert isinstance(again, JobFailed)
    assert (again.status, again.code, again.type, again.message, again.param) == (
        status,
        code,
        kind,
        "it went wrong",
        "prompt",
    )


def test_a_code_outside_the_table_is_typed_by_its_status() -> None:
    assert job_failure(Error(seq=0, code="worker_lost", message="x", status=503)).type == "server_error"
    assert job_failure(Error(seq=0, code="worker_crashed", message="x", status=400)).type == "invalid_request_error"
