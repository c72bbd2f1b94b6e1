"""The workers' side of the protocol: read jobs from the model streams, publish events, acknowledge.

All methods are synchronous and batch their commands: a worker makes one round trip to read, one per engine
step to publish every running job's events, and one to acknowledge what finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError
from redis.exceptions import ResponseError

from broker.keys import CONSUMER_GROUP, Keys
from broker.schemas import Accepted, Delta, Done, Error, Job

log = logging.getLogger(__name__)

AnyEvent = Accepted | Delta | Done | Error


@dataclass
class Delivery:
    """A job as read from a stream, with what is needed to acknowledge it."""

    stream: str
    entry_id: str
    job: Job


@dataclass
class Malformed:
    """A stream entry that is not a valid job. It is acknowledged and counted, never run."""

    stream: str
    entry_id: str
    reason: str
    job_id: str | None


class JobConsumer:
    def __init__(self, client: redis.Redis, keys: Keys, models: Sequence[str], consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.models = list(models)
        self.consumer = consumer
        self.streams = [keys.jobs(m) for m in self.models]

    def ensure_groups(self) -> None:
        """Create each stream and its consumer group (idempotent). A front server treats an existing stream as
        a known model, so this is also how a model becomes known."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, count: int, block_ms: int | None) -> list[Delivery | Malformed]:
        """Up to ``count`` new jobs per stream; blocks up to ``block_ms`` when there are none (None: don't block)."""
        try:
            reply = self.client.xreadgroup(
                CONSUMER_GROUP, self.consumer, dict.fromkeys(self.streams, ">"), count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without AOF): recreate and carry on
                self.ensure_groups()
                return []
            raise
        out: list[Delivery | Malformed] = []
        streams: list[Any] = reply or []  # type: ignore[assignment]  # redis-py types every reply as a union
        for stream_name, entries in streams:
            stream = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append(self._decode(stream, eid, fields))
        return out

    @staticmethod
    def _decode(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Delivery | Malformed:
        raw = fields.get(b"job")
        if raw is None:
            return Malformed(stream, entry_id, "entry has no 'job' field", None)
        try:
            return Delivery(stream, entry_id, Job.model_validate_json(raw))
        except ValidationError as exc:
            job_id = None
            with contextlib.suppress(ValueError, AttributeError):
                job_id = json.loads(raw).get("id")
            return Malformed(stream, entry_id, f"invalid job: {exc.errors()[0]['msg']}", job_id)

    def subscribers(self, job_ids: Iterable[str]) -> list[int]:
        """How many front servers listen to each job's channel (0: the client has gone)."""
        channels = [self.keys.events(j) for j in job_ids]
        if not channels:
            return []
        counts = dict(self.client.pubsub_numsub(*channels))
        return [int(counts.get(c.encode(), counts.get(c, 0))) for c in channels]

    def publish(self, events: Sequence[tuple[str, AnyEvent]]) -> list[int]:
        """Publish (job id, event) pairs in one round trip; returns the receiver count of each."""
        if not events:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id, event in events:
            pipe.publish(self.keys.events(job_id), event.model_dump_json(exclude_none=True))
        return [int(n) for n in pipe.execute()]

    def ack(
        self, items: Sequence[Delivery | Malformed], counters: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        """Acknowledge and delete finished entries, so a stream's length is its backlog (waiting + running), and
        add ``counters`` ({model: {field: n}}) to the models' stats hashes in the same round trip."""
        if not items and not counters:
            return
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.xack(item.stream, CONSUMER_GROUP, item.entry_id)
            pipe.xdel(item.stream, item.entry_id)
        for model, fields in (counters or {}).items():
            for name, value in fields.items():
                if value:
                    pipe.hincrby(self.keys.stats(model), name, value)
        pipe.execute()
