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
import threading
from types import FrameType

import redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.job import Job as RqJob
from rq.serializers import JSONSerializer

from batch.queue import COMPLETION_WINDOWS, WAITING, enqueue_run, run_status
from batch.runner import RunContext, current_run
from broker.batches import TERMINAL, BatchRecords, BatchStatus
from broker.keys import Keys
from broker.settings import Settings

log = logging.getLogger(__name__)

# What rq's worker logs at INFO on every maintenance round (each heartbeat TTL, a few seconds): routine, and at
# INFO it drowned everything else `queuechat up` prints.
ROUTINE_RQ_MESSAGES = ("cleaning registries for queue", "cleaning group registries")


class RoutineAtDebug(logging.Filter):
    """Logs rq's routine maintenance lines at DEBUG: shown with ``--log-level debug``, hidden at INFO."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and any(m in str(record.msg) for m in ROUTINE_RQ_MESSAGES):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return self.logger.isEnabledFor(logging.DEBUG)
        return True


def quiet_routine(logger: logging.Logger) -> None:
    """Install :class:`RoutineAtDebug` on rq's worker logger once."""
    if not any(isinstance(f, RoutineAtDebug) for f in logger.filters):
        logger.addFilter(RoutineAtDebug(logger))


def resume_orphans(client: redis.Redis, settings: Settings) -> list[str]:
    """Re-queue unfinished batches that no batch worker runs (its lease expired) and no queued job will run."""
    records = BatchRecords(client, Keys(settings.key_prefix))
    resumed = []
    for batch_id in records.batch_ids():
        fields = records.batch_fields(batch_id)
        if not fields or BatchStatus(fields["status"]) in TERMINAL or records.leased(batch_id):
            continue
        run_id = fields.get("rq_job_id", "")
        status = run_status(client, run_id)
        if status in WAITING:
            continue
        attempt = int(fields.get("runs", "1")) + 1
        new_run = f"queuechat-{batch_id}-{attempt}"
        records.set_run(batch_id, new_run, attempt)
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
            [Queue(settings.batch_queue_name, connection=connection, serializer=JSONSerializer)],
            connection=connection,
            serializer=JSONSerializer,
            maintenance_interval=interval,
            worker_ttl=15 + interval,  # rq waits worker_ttl - 15 s for a job: the scan then runs every interval
            job_monitoring_interval=10,
        )
        self.settings = settings
        self.run_context = RunContext(settings)
        quiet_routine(self.log)

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
        handed = current_run.set(self.run_context)  # the job's settings and stop signal (see batch.runner)
        try:
            self.perform_job(job, queue, execution)
        finally:
            current_run.reset(handed)
            done.set()
            beating.join()
        self.set_state("idle")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.run_context.stop_requested.set()
        super().request_stop(signum, frame)
