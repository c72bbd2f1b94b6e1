"""queuechat's exceptions. Each carries the HTTP status and OpenAI error code it maps to, so the API turns any
of them into the right response in one place.

    QueuechatError
    ├── InvalidRequest          400 invalid_request (a job its worker cannot run as asked: a bad prompt or parameter)
    │   ├── ContextLengthExceeded   400 context_length_exceeded
    │   └── InvalidJob              400 invalid_job (a stream entry that is not a job)
    ├── JobCancelled            409 cancelled (its client left, or nobody resumed its stream in time)
    ├── ModelNotFound           404 model_not_found
    ├── NotFound                404 not_found (a file or batch id)
    ├── FileTooLarge            413 file_too_large
    ├── QueueFull               429 queue_full (with retry_after)
    ├── NoWorkerAvailable       503 no_worker_available
    ├── BrokerUnavailable       503 broker_unavailable
    ├── RequestTimedOut         504 timeout (the front server's own deadline)
    ├── JobTimedOut             504 timeout (the job's deadline passed on its worker)
    ├── EngineFailed            500 engine_error
    │   └── OutOfMemory             503 out_of_memory
    └── JobFailed               status and code from the worker's error event (worker_lost, context_length_exceeded…)

A worker raises the classes above JobFailed and sends each as an ``error`` event (``broker.schemas.error_event``);
the front end raises that event again as a :class:`JobFailed` (``broker.schemas.job_failure``) of the same status,
code and param, whose OpenAI error type is the worker's class's (:data:`WORKER_ERRORS`).
"""

from __future__ import annotations


class QueuechatError(Exception):
    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, code={self.code!r})"


class InvalidRequest(QueuechatError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class InvalidJob(InvalidRequest):
    code = "invalid_job"


class JobCancelled(QueuechatError):
    status = 409
    code = "cancelled"
    type = "invalid_request_error"


class ModelNotFound(QueuechatError):
    status = 404
    code = "model_not_found"
    type = "invalid_request_error"


class NotFound(QueuechatError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class FileTooLarge(QueuechatError):
    status = 413
    code = "file_too_large"
    type = "invalid_request_error"


class QueueFull(QueuechatError):
    status = 429
    code = "queue_full"
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoWorkerAvailable(QueuechatError):
    status = 503
    code = "no_worker_available"
    type = "service_unavailable"


class BrokerUnavailable(QueuechatError):
    status = 503
    code = "broker_unavailable"
    type = "service_unavailable"


class RequestTimedOut(QueuechatError):
    status = 504
    code = "timeout"
    type = "timeout"


class JobTimedOut(QueuechatError):
    """Unlike :class:`RequestTimedOut` (the front server's), typed as the server error a worker's always was."""

    status = 504
    code = "timeout"
    type = "server_error"


class EngineFailed(QueuechatError):
    status = 500
    code = "engine_error"
    type = "server_error"


class OutOfMemory(EngineFailed):
    """Named apart from other engine errors (FastChat's 50002): the client's remedy differs, a shorter request or a
    retry once the worker has room again."""

    status = 503
    code = "out_of_memory"


# The errors workers send in ``error`` events, by code: one vocabulary for both sides of Redis.
WORKER_ERRORS: dict[str, type[QueuechatError]] = {
    cls.code: cls
    for cls in (InvalidRequest, ContextLengthExceeded, InvalidJob, JobCancelled, JobTimedOut, EngineFailed, OutOfMemory)
}


class JobFailed(QueuechatError):
    """The worker reported an error for the job; status and code come from its error event."""

    def __init__(self, message: str, *, status: int, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.code = code
        known = WORKER_ERRORS.get(code)
        if known is not None and known.status == status:
            self.type = known.type
        else:  # a code of another version's worker, or one the front end gives itself (worker_lost, events_lost…)
            self.type = "invalid_request_error" if 400 <= status < 500 else "server_error"
