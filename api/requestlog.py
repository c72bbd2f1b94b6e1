"""One log line per API request: method, path, status, model, job id, the client's request id, queue wait, tokens
and duration.

:class:`RequestRecord` is the request's own job observer (see :class:`serving.jobs.JobObserver`): it learns the
job ids, the queue wait (until the first ``accepted``) and the tokens from the events the request's answer is
built from. :class:`RequestIdMiddleware` writes the line once the response has been sent, a stream's last chunk
included.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from broker.jobevents import JobEvents
from broker.schemas import Accepted, AnyEvent, Done

log = logging.getLogger("queuechat.requests")


@dataclass
class RequestRecord:
    method: str
    path: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    model: str | None = None
    job_ids: list[str] = field(default_factory=list)
    queue_wait: float | None = None  # seconds until the first job was accepted by a worker
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _submitted: dict[str, float] = field(default_factory=dict)
    _accepted: set[str] = field(default_factory=set)

    def job_submitted(self, events: JobEvents, submitted: float) -> None:
        self.job_ids.append(events.job.id)
        self._submitted[events.job.id] = submitted

    def job_event(self, events: JobEvents, event: AnyEvent) -> None:
        job_id = events.job.id
        if isinstance(event, Accepted) and job_id not in self._accepted:  # a restart counts its prompt once
            self._accepted.add(job_id)
            self.prompt_tokens += event.prompt_tokens
            if self.queue_wait is None:
                self.queue_wait = time.monotonic() - self._submitted.get(job_id, self.started)
        elif isinstance(event, Done):
            self.completion_tokens += event.usage.completion_tokens

    def line(self) -> str:
        jobs = ",".join(self.job_ids) or "-"
        wait = "-" if self.queue_wait is None else f"{self.queue_wait:.3f}s"
        return (
            f"{self.method} {self.path} {self.status or '-'} model={self.model or '-'} job={jobs} "
            f"request_id={self.request_id} queue_wait={wait} prompt_tokens={self.prompt_tokens} "
            f"completion_tokens={self.completion_tokens} duration={time.monotonic() - self.started:.3f}s"
        )

    def write(self) -> None:
        log.info("%s", self.line())
