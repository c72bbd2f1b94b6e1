"""Every Redis name queuechat uses, built in one place and readable back (for the info monitor).

| name                     | type     | holds                                             |
|--------------------------|----------|---------------------------------------------------|
| ``{p}:jobs:{model}``     | stream   | queued and running jobs, consumer group ``workers`` |
| ``{p}:events:{job_id}``  | pub/sub  | a job's events, for the front server that sent it |
| ``{p}:workers``          | hash     | worker id -> JSON card                            |
| ``{p}:worker:{id}``      | string   | heartbeat with TTL; value = live stats JSON       |
| ``{p}:stats:{model}``    | hash     | counters (completed, failed, tokens, ...)         |
| ``{p}:dead:{model}``     | stream   | dead-lettered jobs                                |
| ``{p}:batch:{model}``    | stream   | batch lines: read only when ``jobs`` gives nothing |
| ``{p}:files``            | zset     | file ids by creation time                         |
| ``{p}:files:{id}``       | hash     | a file's metadata (JSON) and where it is stored   |
| ``{p}:batches``          | zset     | batch ids by creation time                        |
| ``{p}:batches:{id}``     | hash     | a batch: its fields, status and live counts       |
| ``{p}:batchdone:{id}``   | hash     | custom_id -> ok/failed, for every finished line   |
| ``{p}:batchlease:{id}``  | string   | the batch worker running the batch, with a TTL    |
| ``{p}:responses:{id}``   | hash     | a stored Response: owner, status, object, conversation; TTL |
"""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "qc"

    def jobs(self, model: str) -> str:
        return f"{self.prefix}:jobs:{model}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def stats(self, model: str) -> str:
        return f"{self.prefix}:stats:{model}"

    def dead(self, model: str) -> str:
        return f"{self.prefix}:dead:{model}"

    def batch_jobs(self, model: str) -> str:
        """The low-priority stream of a model: batch lines wait here until no interactive job is waiting."""
        return f"{self.prefix}:batch:{model}"

    @property
    def files(self) -> str:
        return f"{self.prefix}:files"

    def file(self, file_id: str) -> str:
        return f"{self.prefix}:files:{file_id}"

    @property
    def batches(self) -> str:
        return f"{self.prefix}:batches"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batches:{batch_id}"

    def batch_done(self, batch_id: str) -> str:
        return f"{self.prefix}:batchdone:{batch_id}"

    def batch_lease(self, batch_id: str) -> str:
        return f"{self.prefix}:batchlease:{batch_id}"

    def jobs_pattern(self) -> str:
        """A SCAN pattern that matches every job stream."""
        return f"{self.prefix}:jobs:*"

    def model_of_jobs(self, key: str | bytes) -> str:
        """The model name a job stream key belongs to (the inverse of :meth:`jobs` and :meth:`batch_jobs`)."""
        text = key.decode() if isinstance(key, bytes) else key
        for head in (f"{self.prefix}:jobs:", f"{self.prefix}:batch:"):
            if text.startswith(head):
                return text[len(head) :]
        raise ValueError(f"{text!r} is not a job stream of prefix {self.prefix!r}")

    def job_of_events(self, channel: str | bytes) -> str:
        """The job id an events channel belongs to (the inverse of :meth:`events`)."""
        text = channel.decode() if isinstance(channel, bytes) else channel
        return text[len(self.prefix) + len(":events:") :]

    def response(self, response_id: str) -> str:
        """A stored Response of the Responses API (see :mod:`broker.responses`)."""
        return f"{self.prefix}:responses:{response_id}"
