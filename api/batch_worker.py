"""``queuechat batch-worker``: an rq worker on the batch queue, with queuechat's settings and JSON serialisation.

It is rq's own worker (so ``rq info -u <redis url>`` lists the queue and its workers), in its in-process form:
a batch run is I/O (it waits on model workers), and a forked work horse would outlive a SIGKILLed parent and go
on feeding a batch that a restarted worker also resumes.

Resuming after a crash is done here rather than with rq's ``Retry``: rq only notices an abandoned in-process job
when its heartbeat TTL (the job timeout, a day for a batch) runs out. Each batch being run holds a lease key with a
TTL of seconds instead; every few seconds, between jobs, a batch worker re-queues the batches that are not
finished, have no lease and have no queued run. The runner itself skips whatever the result files already hold.
"""

from __future__ import annotations

import logging
import os
import threading
from types import FrameType
from typing import Annotated

import redis
import typer
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from api import batch_runner
from api.batches import COMPLETION_WINDOWS, enqueue_run
from broker.batches import TERMINAL, BatchStatus
from broker.keys import Keys
from broker.settings import Settings

log = logging.getLogger(__name__)

WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def resume_orphans(client: redis.Redis, settings: Settings) -> list[str]:
    """Re-queue unfinished batches that no batch worker runs (its lease expired) and no queued job will run."""
    keys = Keys(settings.key_prefix)
    resumed = []
    ids: list[bytes] = client.zrevrange(keys.batches, 0, -1)  # type: ignore[assignment]
    for raw_id in ids:
        batch_id = raw_id.decode()
        raw: dict[bytes, bytes] = client.hgetall(keys.batch(batch_id))  # type: ignore[assignment]
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if not fields or BatchStatus(fields["status"]) in TERMINAL or client.exists(keys.batch_lease(batch_id)):
            continue
        run_id = fields.get("rq_job_id", "")
        try:
            status = RqJob.fetch(run_id, connection=client, serializer=JSONSerializer).get_status()
        except Exception:  # gone (expired, deleted) or unreadable: it will not run
            status = None
        if status in WAITING:
            continue
        attempt = int(fields.get("runs", "1")) + 1
        new_run = f"queuechat-{batch_id}-{attempt}"
        client.hset(keys.batch(batch_id), mapping={"rq_job_id": new_run, "runs": attempt})
        enqueue_run(client, settings, batch_id, new_run, COMPLETION_WINDOWS["24h"])
        log.warning("batch %s had no live runner (last run %s: %s); queued it again", batch_id, run_id, status)
        resumed.append(batch_id)
    return resumed


class BatchWorker(SimpleWorker):
    """rq's in-process worker, plus: the orphan scan as a maintenance task every few seconds, rq heartbeats kept
    during a long run, and a warm stop (SIGTERM) that makes the running batch stop feeding and hand itself back."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        interval = max(1, int(settings.heartbeat_ttl))
        super().__init__(
            [Queue(settings.batch_queue, connection=connection, serializer=JSONSerializer)],
            connection=connection,
            serializer=JSONSerializer,
            maintenance_interval=interval,
            worker_ttl=15 + interval,  # rq waits worker_ttl - 15 s for a job: the scan then runs every interval
            job_monitoring_interval=10,
        )
        self.settings = settings

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            resume_orphans(self.connection, self.settings)
        except RedisError as exc:
            log.warning("could not look for batches to resume: %s", exc)

    def execute_job(self, job: RqJob, queue: Queue) -> None:
        # rq's in-process worker does not heartbeat during a job; a batch runs for hours, and without heartbeats
        # `rq info` would drop this worker and rq's cleanup would call the run abandoned.
        execution = self.prepare_execution(job)
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.job_monitoring_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                except RedisError as exc:
                    log.warning("rq heartbeat failed: %s", exc)

        beating = threading.Thread(target=beat, name="rq-heartbeat", daemon=True)
        beating.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beating.join()
        self.set_state("idle")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        batch_runner.stop_requested.set()
        super().request_stop(signum, frame)


def batch_worker_command(
    redis_url: Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")] = None,
    burst: Annotated[bool, typer.Option(help="Quit when the queue is empty")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run batches (the Batch API's rq jobs) from the batch queue."""
    from broker.connection import sync_client
    from broker.logs import configure_logging

    configure_logging(log_level)
    settings = Settings.load(redis_url)
    if not settings.redis_url:
        raise typer.BadParameter("a batch worker needs --redis-url (or QUEUECHAT_REDIS_URL)")
    os.environ["QUEUECHAT_REDIS_URL"] = settings.redis_url  # the rq job reads its settings from the environment
    worker = BatchWorker(settings, sync_client(settings.redis_url))
    log.info("batch worker on queue %s, files in %s", settings.batch_queue, settings.files_dir)
    worker.work(burst=burst, logging_level=log_level.upper())


def main() -> None:
    typer.run(batch_worker_command)
