"""The rq queue of batch runs: one rq job (JSON-serialised, never pickled) per run of a batch."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from broker.settings import Settings

COMPLETION_WINDOWS = {"24h": 24 * 3600}
# The rq job's function, by name: any batch worker on this Redis can run it.
RUN_FUNCTION = "batch.runner.run_batch"
WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
# rq 3 cannot run on a Redis Cluster: its worker needs one plain connection (it reads the connection pool's
# settings), and its global keys (rq:queues, rq:workers) and its transactions over a job's and a queue's keys span
# slots that no hash tag in a queue name or job id brings together (rq/rq#2021; cluster support is rq/rq#2418, open).
NO_CLUSTER = (
    "the Batch API's queue is rq's, and rq cannot run on a Redis Cluster: run the API's batch routes and "
    "`queuechat batch-worker` against a plain Redis or Sentinel URL (the other parts of queuechat run on a cluster)"
)


def batch_queue(client: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.batch_queue_name, connection=client, serializer=JSONSerializer)


def enqueue_run(client: redis.Redis, settings: Settings, batch_id: str, rq_job_id: str, window: float) -> None:
    """Queue the rq job that runs a batch. Its arguments are plain strings: any batch worker on this Redis can run
    it, and reads everything else from the batch's record."""
    batch_queue(client, settings).enqueue(
        RUN_FUNCTION,
        settings.key_prefix,
        batch_id,
        job_id=rq_job_id,
        job_timeout=int(window) + 3600,  # the runner expires the batch itself at its window; this is a backstop
        result_ttl=7 * 24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"batch {batch_id}",
    )


def run_status(client: redis.Redis, rq_job_id: str) -> JobStatus | None:
    """The rq job's status; None when it is gone (expired, deleted) or unreadable: it will not run."""
    try:
        return RqJob.fetch(rq_job_id, connection=client, serializer=JSONSerializer).get_status()
    except Exception:  # rq raises NoSuchJobError, or a decoding error for a job it cannot read
        return None


def cancel_queued_run(client: redis.Redis, rq_job_id: str) -> bool:
    """Take the batch's rq job off the queue if no batch worker has started it; True if it was taken off."""
    try:
        job = RqJob.fetch(rq_job_id, connection=client, serializer=JSONSerializer)
    except Exception:  # rq raises NoSuchJobError, or a decoding error for a job it cannot read: nothing to cancel
        return False
    if job.get_status() != JobStatus.QUEUED:
        return False
    job.cancel()
    return True
