"""A worker's read by turns: the fair read script (broker/fairness.py), called once per model."""

from __future__ import annotations

from typing import Any

import redis

from broker.fairness import FAIR_READ_SCRIPT
from broker.keys import CONSUMER_GROUP, Keys
from broker.streams import WorkerStreams


class FairRead:
    def __init__(self, client: redis.Redis, keys: Keys, streams: WorkerStreams, consumer: str, *, cluster: bool):
        self.client = client
        self.keys = keys
        self.streams = streams
        self.consumer = consumer
        self.cluster = cluster
        self._script = client.register_script(FAIR_READ_SCRIPT)

    def replies(self, count: int, single: bool) -> list[Any]:
        """The fair read script's reply for each model: in one pipeline, or one call per model on a cluster (whose
        pipelines take no scripts). A single model's batch stream is read by the same script."""
        calls: list[tuple[list[str], list[str | int]]] = []
        for model in self.streams.models:
            keys = [self.keys.jobs(model), self.keys.fair_streams(model), self.keys.fair_state(model)]
            if single:
                keys.append(self.keys.batch_jobs(model))
            calls.append((keys, [CONSUMER_GROUP, self.consumer, count]))
        if self.cluster:
            return [self._script(keys=keys, args=args) for keys, args in calls]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            self._script(keys=keys, args=args, client=pipe)
        return list(pipe.execute())
