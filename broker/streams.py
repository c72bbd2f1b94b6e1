"""The streams a worker reads: each model's own, its tenants' (learnt from the fair read and from the models'
registries of tenant streams, broker/fairness.py) and its batch stream, and which model each belongs to."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from broker.decode import texts
from broker.keys import Keys, model_slot


class WorkerStreams:
    def __init__(self, client: redis.Redis, keys: Keys, models: Sequence[str], *, cluster: bool) -> None:
        self.client = client
        self.keys = keys
        self.models = list(models)
        self.own = [keys.jobs(m) for m in self.models]
        # Batch lines: read only when the interactive streams have nothing for this worker.
        self.low = [keys.batch_jobs(m) for m in self.models]
        # A script or an XREADGROUP touches one slot on a cluster: the models of each slot are read apart. (On a
        # single Redis, every model is read at once.)
        by_slot: dict[int, list[str]] = {}
        for model in self.models:
            by_slot.setdefault(model_slot(model) if cluster else 0, []).append(model)
        self.read_groups = [(
            [keys.jobs(m) for m in models], [keys.batch_jobs(m) for m in models]
        ) for models in by_slot.values()]  # fmt: skip
        # every stream of this worker's models -> its model; the tenants' streams are added as they are learnt
        self._model_of: dict[str, str] = {s: m for m in self.models for s in (keys.jobs(m), keys.batch_jobs(m))}
        self.fair: dict[str, list[str]] = {m: [] for m in self.models}  # each model's tenant streams

    def model_of(self, stream: str) -> str:
        """The model a stream of this worker belongs to."""
        return self._model_of.get(stream) or self.keys.model_of_jobs(stream)

    def learn(self, model: str, streams: Iterable[Any]) -> None:
        """The tenant streams of ``model`` as a fair read or the model's registry lists them."""
        names = texts(streams)
        self.fair[model] = names
        self._model_of.update(dict.fromkeys(names, model))

    def refresh(self) -> None:
        """Read the models' registries of tenant streams (one round trip), for the takeover passes."""
        pipe = self.client.pipeline(transaction=False)
        for model in self.models:
            pipe.hkeys(self.keys.fair_streams(model))
        for model, names in zip(self.models, pipe.execute(), strict=True):
            self.learn(model, names)

    def all(self) -> list[str]:
        """Every stream this worker reads, interactive ones first (each model's own, then its tenants'), batch
        streams last; the tenant streams as last learnt."""
        fair = [s for m in self.models for s in self.fair[m]]
        return self.own + fair + self.low

    def tenants_of(self, streams: Iterable[str]) -> list[str]:
        """The tenant streams of the models of these streams."""
        return [s for stream in streams for s in self.fair[self.model_of(stream)]]
