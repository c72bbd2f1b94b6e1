"""queuechat's exceptions. Each carries the HTTP status and OpenAI error code it maps to, so the API turns any
of them into the right response in one place.

    QueuechatError
    ├── InvalidRequest          400 invalid_request_error
    ├── ModelNotFound           404 model_not_found
    ├── NotFound                404 not_found (a file or batch id)
    ├── FileTooLarge            413 file_too_large
    ├── QueueFull               429 queue_full (with retry_after)
    ├── NoWorkerAvailable       503 no_worker_available
    ├── BrokerUnavailable       503 broker_unavailable
    ├── RequestTimedOut         504 timeout
    └── JobFailed               status and code from the worker's error event (worker_lost, context_length_exceeded…)
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


class JobFailed(QueuechatError):
    """The worker reported an error for the job; status and code come from its error event."""

    def __init__(self, message: str, *, status: int, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.code = code
        self.type = "invalid_request_error" if 400 <= status < 500 else "server_error"
