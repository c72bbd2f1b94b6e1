"""The front servers' side of the protocol: check a model, submit a job, then iterate over its events.

One pub/sub connection per process carries the events of every in-flight job (broker/eventrouter.py), subscribed
before the job is queued. Pub/sub is at most once: what is published while the connection is down never arrives.
Every event is also in the job's log (broker/eventlog.py), so after a gap in ``seq`` or a reconnect a job's
:class:`~broker.jobevents.JobEvents` reads what it missed from there; only a log that is gone (Redis restarted
empty) still fails the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

from broker import eventlog, fairness
from broker.connection import is_cluster
from broker.errors import BrokerUnavailable, ModelNotFound, NoWorkerAvailable, QueueFull
from broker.eventrouter import EventRouter, ShardedEventRouter
from broker.jobevents import JobEvents
from broker.keys import CONSUMER_GROUP, Keys
from broker.registry import LiveWorker, live_workers_async, models_of
from broker.schemas import Job, JobKind, SamplingParams
from broker.settings import Settings
from broker.tenants import current_tenant

log = logging.getLogger(__name__)

# How long a front server trusts its view of the live workers when admitting jobs (one lookup per second
# instead of three round trips per request). A job sent to a model whose last worker just died waits in its stream
# for a worker until its deadline.
LIVE_CACHE_SECONDS = 1.0
# Past LIVE_CACHE_SECONDS and up to this age, a request is answered from the cache while a lookup in the background
# renews it, so a steady trickle of requests (one a second: every one would find the cache just expired) never
# waits for the registry; older than this, the lookup is made before answering.
LIVE_CACHE_STALE_SECONDS = 5.0
# A hung-up client's mark for its job's worker lives this long past the job's deadline: a worker that reads the job
# from its queue any time before then skips it, one that reads it later drops it as expired.
CANCEL_MARK_SECONDS = 60


class Producer:
    """Submits jobs for front servers (the API, the web UI)."""

    def __init__(self, client: aredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.cluster = is_cluster(client)
        self.router: EventRouter | ShardedEventRouter = (
            ShardedEventRouter(client) if self.cluster else EventRouter(client)
        )
        self._admit = client.register_script(fairness.ADMIT_SCRIPT)
        self._live_cache: tuple[float, dict[str, list[LiveWorker]]] = (0.0, {})
        self._live_refresh: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def live_workers(self) -> list[LiveWorker]:
        try:
            return await live_workers_async(self.client, self.keys)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc

    async def live_models(self) -> dict[str, list[LiveWorker]]:
        return models_of(await self.live_workers())

    async def live_models_cached(self, model: str) -> dict[str, list[LiveWorker]]:
        """The live models, re-read at most once a second while ``model`` is among them. Only the positive answer
        is cached: a model missing from the cache is always looked up afresh before a 404 or 503."""
        at, live = self._live_cache
        age = time.monotonic() - at
        if model in live and age < LIVE_CACHE_SECONDS:
            return live
        if model in live and age < LIVE_CACHE_STALE_SECONDS:
            if self._live_refresh is None or self._live_refresh.done():
                self._live_refresh = asyncio.create_task(self._refresh_live(), name="queuechat-live-workers")
            return live
        return await self._refresh_live_now()

    async def _refresh_live_now(self) -> dict[str, list[LiveWorker]]:
        live = await self.live_models()
        self._live_cache = (time.monotonic(), live)
        return live

    async def _refresh_live(self) -> None:
        try:
            await self._refresh_live_now()
        except BrokerUnavailable as exc:  # the next request looks again; its own commands report the outage
            log.debug("could not renew the live workers: %s", exc)

    async def check_model(self, model: str) -> float:
        """Raise unless a live worker serves ``model``, or it is known and its jobs may wait for a worker to start
        (``wait_for_worker``): then return how many seconds they may wait (0.0 when a worker is live). (Whether
        its queue has room is checked as the job is added, in the same script.) A tenant's key limited to some
        models sees the others as absent.

        A model is known when its job stream exists (a worker created it, see the consumer's ``ensure_groups``) or
        when ``wait_for_worker`` names it: on a fresh Redis no worker has created the stream yet, so a deployment
        that scales to zero declares its models, and the stream and its group are created here, for the autoscaler
        to see the group's lag."""
        tenant = current_tenant.get()
        if tenant is not None and not tenant.allows(model):
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        live = await self.live_models_cached(model)
        if model in live:
            return 0.0
        wait = self.settings.wait_for_worker
        try:
            known = bool(await self.client.exists(self.keys.jobs(model)))
            if not known and wait.declares(model):
                await self._create_stream(self.keys.jobs(model))
                known = True
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
        if not known:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        if wait.seconds(model) <= 0:
            raise NoWorkerAvailable(f"no worker is serving model {model!r} right now")
        return wait.seconds(model)

    async def declare_models(self) -> None:
        """Create the streams of the models ``wait_for_worker`` declares, so that an autoscaler watching their
        group's lag finds it before the first request (best effort: a request creates its model's stream too)."""
        for model in self.settings.wait_for_worker.models:
            try:
                await self._create_stream(self.keys.jobs(model))
            except (RedisError, OSError) as exc:
                log.warning("could not create the job stream of declared model %r: %s", model, exc)
                return

    async def _create_stream(self, stream: str) -> None:
        """A job stream of a model and the workers' group on it, as a worker would create them (idempotent)."""
        try:
            await self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def max_model_len(self, model: str) -> int | None:
        """The longest context a live worker of ``model`` advertises (None when none says), from the cached view."""
        live = await self.live_models_cached(model)
        lengths = [w.card.max_model_len for w in live.get(model, []) if w.card.max_model_len]
        return max(lengths) if lengths else None

    async def submit(self, job: Job, *, low_priority: bool = False, resume: dict[str, Any] | None = None) -> JobEvents:
        """Check the model, subscribe to the job's channel, then queue the job (and begin its event log, in the
        same script). Returns its event iterator.

        ``low_priority`` queues it on the model's batch stream, which workers read only when no interactive job
        is waiting (the Batch API's lines). An interactive job of an API key (``current_tenant``), or of a priority
        other than 0, goes to that key's stream of that priority, which workers read by turns (broker/fairness.py).
        ``resume`` is kept in the log for a front server that resumes the job's stream for its client (see
        :meth:`attach`): who may, and how the stream was asked for."""
        worker_wait = await self.check_model(job.model)
        channel = self.keys.events(job.id)
        queue = await self.router.subscribe(channel)
        events = JobEvents(self, job, queue)
        events.worker_wait = self.settings.wait_for_worker.seconds(job.model)
        stream, entry, weight = self._stream_of(job, low_priority)
        if worker_wait > 0:
            events.waiting_since = time.monotonic()  # no worker is live: the wait for one begins now
            if low_priority:  # a batch line: the autoscaler reads the lag of the batch stream's group too
                try:
                    await self._create_stream(stream)
                except BaseException as exc:
                    events.close()
                    if isinstance(exc, RedisError | OSError):
                        raise BrokerUnavailable(f"cannot queue the job: {exc}") from exc
                    raise
        args: list[Any] = [self.settings.max_queue_len, self.settings.stream_maxlen, job.model_dump_json(), entry]
        args += [f"w:{weight[0]}", weight[1], CONSUMER_GROUP]
        keys = [stream, self.keys.jobs(job.model), self.keys.fair_streams(job.model), self.keys.fair_state(job.model)]
        if self.settings.event_log:
            keys.append(self.keys.log(job.id))
            args += [
                eventlog.meta_json(job.model, job.params.n, job.deadline, resume),
                eventlog.submission_ttl_ms(job.deadline, self.settings.event_log_ttl),
            ]
        try:
            backlog = int(await self._admit(keys=keys, args=args))
        except BaseException as exc:
            events.close()
            if isinstance(exc, RedisError | OSError):
                raise BrokerUnavailable(f"cannot queue the job: {exc}") from exc
            raise
        if backlog < 0:
            events.close()
            raise self._queue_full(job.model, -backlog - 1)
        events.queued = True
        return events

    def _stream_of(self, job: Job, low_priority: bool) -> tuple[str, str, tuple[str, int]]:
        """The stream a job is queued on, its registry entry ("" for the model's own streams) and its tenant's
        weight. Batch lines share the batch stream; an interactive job goes to its tenant's stream of its priority
        (see :mod:`broker.fairness`), a request without a key of priority 0 to the model's stream."""
        tenant = current_tenant.get()
        name = tenant.name if tenant is not None else fairness.DEFAULT_TENANT
        weight = (name, tenant.limits.weight if tenant is not None else 1)
        if low_priority:
            return self.keys.batch_jobs(job.model), "", weight
        if tenant is None and job.priority == 0:
            return self.keys.jobs(job.model), "", weight
        stream = self.keys.fair_jobs(job.model, name, job.priority)
        return stream, fairness.registry_entry(name, job.priority), weight

    async def job_log(self, job_id: str) -> eventlog.JobLog:
        """A job's event log as it is now (empty when it is gone)."""
        try:
            return eventlog.parse_entries(await self.client.xrange(self.keys.log(job_id)))
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc

    async def attach(self, job_id: str, meta: dict[str, Any]) -> JobEvents:
        """The events of a job another front server submitted, from its first (read back from its log) to its
        last (live): for a client resuming its stream here. ``meta`` is the log's record of the job."""
        job = Job(
            id=job_id,
            kind=JobKind.CHAT,
            model=str(meta.get("model", "")),
            params=SamplingParams(n=int(meta.get("n", 1))),
            deadline=float(meta.get("deadline", time.time())),
        )
        queue = await self.router.subscribe(self.keys.events(job_id))
        events = JobEvents(self, job, queue)
        events.catch_up_from_start()  # after the subscription: nothing published from now on is missed
        return events

    def mark_cancelled(self, job_id: str, deadline: float, *, at_once: bool = False) -> None:
        """Tell a job's worker its client hung up (in the background: called from synchronous cleanup). The mark
        lasts until the job's ``deadline``: a job still queued is skipped by whichever worker reads it. ``at_once``
        skips the hang-up grace (the client was answered: it cannot resume the stream)."""
        try:
            task = asyncio.get_running_loop().create_task(self._mark_cancelled(job_id, deadline, at_once))
        except RuntimeError:  # no loop: the process is ending, and the orphan grace stops the job
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mark_cancelled(self, job_id: str, deadline: float, at_once: bool) -> None:
        """After ``hangup_grace`` seconds, unless the client came back for its stream by then (on any replica)."""
        try:
            grace = 0.0 if at_once else self.settings.hangup_grace
            if grace > 0:
                await asyncio.sleep(grace)
                channel = self.keys.events(job_id)
                if self.cluster:
                    listening = await self.client.pubsub_shardnumsub(channel)
                else:
                    listening = await self.client.pubsub_numsub(channel)
                if listening and int(listening[0][1]) > 0:
                    return
            ttl = CANCEL_MARK_SECONDS + max(math.ceil(deadline - time.time()), 0)
            await self.client.set(self.keys.cancel(job_id), b"1", ex=ttl)
        except (RedisError, OSError) as exc:
            log.debug("could not mark job %s cancelled: %s", job_id, exc)

    def _queue_full(self, model: str, backlog: int) -> QueueFull:
        """A 429 whose Retry-After is the time for the backlog to drain one slot-full at a time (at least 1 s)."""
        _, live = self._live_cache
        slots = sum(w.card.slots for w in live.get(model, [])) or 1
        return QueueFull(
            f"the queue of model {model!r} is full ({backlog} jobs); retry later",
            retry_after=max(1, math.ceil(backlog / slots)),
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._live_refresh is not None:
            self._live_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._live_refresh
        await self.router.close()
        await self.client.aclose()
