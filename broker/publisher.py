"""A worker's events on their way to front servers: each job's events published on its channel and appended to its
log (broker/eventlog.py) in one round trip per engine step, fenced by the job's stream entry where the worker holds
one, so a worker whose job was taken over cannot write another event of it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from broker import eventlog
from broker.deliveries import Delivery, Malformed
from broker.keys import CONSUMER_GROUP, Keys
from broker.schemas import AnyEvent

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        consumer: str,
        *,
        cluster: bool,
        event_log: bool = True,
        event_log_ttl: float = 300.0,
        event_log_maxlen: int = 100_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.cluster = cluster
        # sharded pub/sub on a cluster: a classic PUBLISH is sent to every node of the cluster
        self._fenced_publish = client.register_script(
            eventlog.SHARDED_FENCED_PUBLISH_SCRIPT if cluster else eventlog.FENCED_PUBLISH_SCRIPT
        )
        self.event_log = event_log
        self.event_log_ttl = event_log_ttl
        self.event_log_maxlen = event_log_maxlen

    def publish(
        self,
        events: Sequence[tuple[str, AnyEvent]],
        ended: Iterable[str] = (),
        owned: Mapping[str, Delivery | Malformed] | None = None,
    ) -> list[int]:
        """Publish (job id, event) pairs in one round trip, each appended to its job's log first; returns the
        receiver count of each. The logs of the ``ended`` jobs (their last event is among these) get their
        retention time.

        The events of a job in ``owned`` (its stream entry) are fenced: published only while that entry is still
        pending to this worker, in one script per job; when another worker took the job over (or it was
        acknowledged) nothing is published and its events' count is :data:`~broker.eventlog.NOT_OWNER`. A fenced
        append refused for an id already there is the same event sent again (a retried publish), and skipped."""
        if not events:
            return []
        try:
            return self._publish(events, ended, owned or {})
        except NoScriptError:
            # a cluster node that never saw the script (new, failed over, or flushed): load it on every node and
            # send again (appends already there are skipped, and front servers drop an event seen twice)
            self.client.script_load(self._fenced_publish.script)
            return self._publish(events, ended, owned or {})

    def _publish(
        self, events: Sequence[tuple[str, AnyEvent]], ended: Iterable[str], owned: Mapping[str, Delivery | Malformed]
    ) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        last = {job_id: i for i, (job_id, _) in enumerate(events)}
        ended = set(ended)
        positions: dict[int, int] = {}
        fenced: dict[str, list[int]] = {}
        for i, (job_id, event) in enumerate(events):
            if job_id in owned:
                fenced.setdefault(job_id, []).append(i)
            else:
                positions[i] = self.send(pipe, job_id, event, ended=last[job_id] == i and job_id in ended)
        for job_id, indexes in fenced.items():
            position = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack)
            self._send_fenced(pipe, owned[job_id], job_id, [events[i][1] for i in indexes], job_id in ended)
            positions.update(dict.fromkeys(indexes, position))
        replies = pipe.execute(raise_on_error=False)
        missing = next((r for r in replies if isinstance(r, NoScriptError)), None)
        if missing is not None:
            raise missing
        for reply in replies:
            if isinstance(reply, Exception):
                log.warning("an event log append failed: %s", reply)
        return [int(replies[positions[i]]) if not isinstance(replies[positions[i]], Exception) else 0
                for i in range(len(events))]  # fmt: skip

    def _send_fenced(
        self, pipe: Any, entry: Delivery | Malformed, job_id: str, events: Sequence[AnyEvent], ended: bool
    ) -> None:
        """Queue one job's events as one fenced script call (see :data:`broker.eventlog.FENCED_PUBLISH_SCRIPT`)."""
        args: list[Any] = [
            CONSUMER_GROUP,
            entry.entry_id,
            self.consumer,
            self.keys.events(job_id),
            self.event_log_maxlen if self.event_log else "",
            max(int(self.event_log_ttl), 1) if ended else "",
        ]
        for event in events:
            args += [eventlog.entry_id_of(event), event.model_dump_json(exclude_none=True)]
        keys = [entry.stream, self.keys.log(job_id)]
        if self.cluster:  # redis-py refuses EVALSHA in a cluster pipeline by name: a missing script is handled above
            pipe.execute_command("EVALSHA", self._fenced_publish.sha, len(keys), *keys, *args)
        else:
            self._fenced_publish(keys=keys, args=args, client=pipe)

    def send(self, pipe: Any, job_id: str, event: AnyEvent, *, ended: bool) -> int:
        """Queue one event's log append and PUBLISH on ``pipe``; returns the PUBLISH's position in the reply."""
        payload = event.model_dump_json(exclude_none=True)
        if self.event_log:
            pipe.xadd(
                self.keys.log(job_id),
                {eventlog.EVENT_FIELD: payload},
                id=eventlog.entry_id_of(event),
                maxlen=self.event_log_maxlen,
                approximate=True,
            )
        position = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack)
        if self.cluster:
            pipe.spublish(self.keys.events(job_id), payload)
        else:
            pipe.publish(self.keys.events(job_id), payload)
        if self.event_log and ended:
            pipe.expire(self.keys.log(job_id), max(int(self.event_log_ttl), 1))
        return position
