"""What a broker outage keeps from Redis until it is back: a job's events waiting to be published (with the
``seq`` values they were given, and the entries that fence them) and the acknowledgements waiting to be sent.

The worker (workers/service.py) owns one. Every publish goes out through it, after whatever an earlier failed
publish held back, fenced by the stream entries the worker holds (see
:meth:`broker.publisher.EventPublisher.publish`): when the broker fails the events are kept and sent again with the
same ``seq`` values at the next try (a repeated append is recognised by the log, a repeated event dropped by front
servers), so none is burnt and no token is lost. Acknowledgements a failure kept are sent with the next ones, so no
finished job stays pending (a finished job left pending to a live worker would stay pending forever). What the
receiver counts mean (a job another worker took over) is the worker's to act on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from redis.exceptions import RedisError

from broker.consumer import Delivery, JobConsumer, Malformed
from workers.admission import AnyEvent

Entry = Delivery | Malformed


class Outbox:
    def __init__(self, consumer: JobConsumer) -> None:
        self.consumer = consumer
        # events of engine steps an outage kept from going out: sent first once it is back
        self._unsent: list[tuple[str, AnyEvent]] = []
        self._unsent_ended: set[str] = set()
        self._unsent_owned: dict[str, Entry] = {}
        # acknowledgements an outage kept from Redis: sent with the next ones
        self._unacked: list[Entry] = []

    @property
    def has_unsent(self) -> bool:
        """Whether events an outage held back wait to be published."""
        return bool(self._unsent)

    @property
    def unacked(self) -> list[Entry]:
        """The finished entries not yet acknowledged (still pending to this worker)."""
        return self._unacked

    def hold_acks(self, items: list[Entry]) -> None:
        """Keep finished entries for the next :meth:`ack`, which sends them (or keeps them, should it fail)."""
        self._unacked += items

    def publish(
        self,
        events: list[tuple[str, AnyEvent]],
        ended: set[str],
        owned: dict[str, Entry] | None,
        owner_of: Callable[[str], Entry | None],
    ) -> tuple[list[tuple[str, AnyEvent]], list[int]]:
        """Publish the held-back events, then these, each fenced by its job's entry: ``owned``'s, else the one held
        back with it, else ``owner_of``'s (the running or just ended job's delivery). Returns every event sent and
        its receiver count; on a broker failure all of them are kept for the next try and the error raised."""
        owners = {**self._unsent_owned, **(owned or {})}
        for job_id, _ in events:
            if job_id not in owners and (owner := owner_of(job_id)) is not None:
                owners[job_id] = owner
        events, ended = self._unsent + events, self._unsent_ended | ended
        try:
            receivers = self.consumer.publish(events, ended=ended, owned=owners)
        except RedisError:
            self._unsent, self._unsent_ended, self._unsent_owned = events, ended, owners
            raise
        self._unsent, self._unsent_ended, self._unsent_owned = [], set(), {}
        return events, receivers

    def ack(self, items: list[Entry], counters: Mapping[str, Mapping[str, int]]) -> None:
        """Acknowledge the held-back entries and these, with ``counters`` for the stats hashes, keeping the entries
        for the next try when the broker fails."""
        items, self._unacked = self._unacked + items, []
        try:
            self.consumer.ack(items, counters)
        except RedisError:
            self._unacked = items
            raise
