"""Every Redis name queuechat uses, built in one place and readable back (for the info monitor).

| name                     | type     | holds                                             |
|--------------------------|----------|---------------------------------------------------|
| ``{p}:jobs:{model}``     | stream   | queued and running jobs, consumer group ``workers`` |
| ``{p}:events:{job_id}``  | pub/sub  | a job's events, for the front server that sent it |
| ``{p}:workers``          | hash     | worker id -> JSON card                            |
| ``{p}:worker:{id}``      | string   | heartbeat with TTL; value = live stats JSON       |
| ``{p}:stats:{model}``    | hash     | counters (completed, failed, tokens, ...)         |
| ``{p}:dead:{model}``     | stream   | dead-lettered jobs                                |
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

    def jobs_pattern(self) -> str:
        """A SCAN pattern that matches every job stream."""
        return f"{self.prefix}:jobs:*"

    def model_of_jobs(self, key: str | bytes) -> str:
        """The model name a job stream key belongs to (the inverse of :meth:`jobs`)."""
        text = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:jobs:"
        if not text.startswith(head):
            raise ValueError(f"{text!r} is not a job stream of prefix {self.prefix!r}")
        return text[len(head) :]

    def job_of_events(self, channel: str | bytes) -> str:
        """The job id an events channel belongs to (the inverse of :meth:`events`)."""
        text = channel.decode() if isinstance(channel, bytes) else channel
        return text[len(self.prefix) + len(":events:") :]
