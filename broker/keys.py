"""Every Redis name queuechat uses, built in one place and readable back (for the info monitor).

| name                     | type     | holds                                             |
|--------------------------|----------|---------------------------------------------------|
| ``{p}:jobs:{model}``     | stream   | queued and running jobs, consumer group ``workers`` |
| ``{p}:events:{job_id}``  | pub/sub  | a job's events, for the front server that sent it |
| ``{p}:log:{job_id}``     | stream   | the same events, kept to catch up and to resume   |
| ``{p}:cancel:{job_id}``  | string   | set by a front server whose client left (short TTL) |
| ``{p}:workers``          | hash     | worker id -> JSON card                            |
| ``{p}:worker:{id}``      | string   | heartbeat with TTL; value = live stats JSON       |
| ``{p}:left:{id}``        | string   | a worker left cleanly, handing its jobs back (TTL) |
| ``{p}:deaths:{job_id}``  | string   | workers that died holding the job (TTL)           |
| ``{p}:stats:{model}``    | hash     | counters (completed, failed, tokens, ...)         |
| ``{p}:dead:{model}``     | stream   | dead-lettered jobs                                |
| ``{p}:batch:{model}``    | stream   | batch lines: read only when ``jobs`` gives nothing |
| ``{p}:fair:{model}:{t}:{n}`` | stream | tenant t's jobs of priority n, group ``workers`` (broker/fairness.py) |
| ``{p}:fairstreams:{model}`` | hash | tenant stream -> "tenant<TAB>priority": the streams workers read |
| ``{p}:drr:{model}``      | hash     | round robin: whose turn, jobs left in it, each tenant's weight |
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
# The entry of a job's event log that holds what the front server recorded at submission (owner, request).
LOG_META_ID = "0-1"


def log_entry_id(seq: int) -> str:
    """The id of event ``seq`` in a job's log: ids grow with ``seq`` and no two events share one."""
    return f"{seq + 1}-0"


def seq_of_log_id(entry_id: str | bytes) -> int:
    """The ``seq`` an event log entry id stands for (the inverse of :func:`log_entry_id`)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) - 1


@dataclass(frozen=True)
class Keys:
    prefix: str = "qc"

    def jobs(self, model: str) -> str:
        return f"{self.prefix}:jobs:{model}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def log(self, job_id: str) -> str:
        """A job's event log: entry ``0-1`` is what the front server recorded at submission (see
        :data:`LOG_META_ID`), then event ``seq`` N is entry ``{N + 1}-0``; an error outside ``seq`` takes an
        automatic id (later than any). Capped, and expiring a while after the job ends."""
        return f"{self.prefix}:log:{job_id}"

    def cancel(self, job_id: str) -> str:
        """Set when a job's client hung up, so its worker cancels it at once rather than waiting for a resume."""
        return f"{self.prefix}:cancel:{job_id}"

    def logs_pattern(self) -> str:
        """A SCAN pattern that matches every event log."""
        return f"{self.prefix}:log:*"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def left(self, worker_id: str) -> str:
        """Set when a worker deregisters after handing its unfinished jobs back: whoever takes them over then
        knows their worker did not die of them."""
        return f"{self.prefix}:left:{worker_id}"

    def deaths(self, job_id: str) -> str:
        """How many workers died (killed, out of memory, wedged) while they held the job."""
        return f"{self.prefix}:deaths:{job_id}"

    def stats(self, model: str) -> str:
        return f"{self.prefix}:stats:{model}"

    def dead(self, model: str) -> str:
        return f"{self.prefix}:dead:{model}"

    def batch_jobs(self, model: str) -> str:
        """The low-priority stream of a model: batch lines wait here until no interactive job is waiting."""
        return f"{self.prefix}:batch:{model}"

    def fair_jobs(self, model: str, tenant: str, priority: int) -> str:
        """The stream of one tenant's jobs of one priority (``tenant`` "": requests without a key, whose priority-0
        jobs stay on :meth:`jobs`). Not matched by :meth:`jobs_pattern`: the model's streams are listed in
        :meth:`fair_streams`. A tenant's name has no colon, so the name reads back unambiguously from the right."""
        return f"{self.prefix}:fair:{model}:{tenant}:{priority}"

    def fair_streams(self, model: str) -> str:
        """The model's tenant streams (hash: stream -> "tenant<TAB>priority"), for the workers' read script."""
        return f"{self.prefix}:fairstreams:{model}"

    def fair_state(self, model: str) -> str:
        """The model's deficit round robin state (hash: ``turn``, ``left``, ``w:{tenant}`` weights)."""
        return f"{self.prefix}:drr:{model}"

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
