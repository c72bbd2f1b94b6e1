"""The model list: the live models with at least one worker, as OpenAI's ``/v1/models`` shows them."""

from __future__ import annotations

from broker.producer import Producer
from broker.registry import LiveWorker
from serving.responses import Model, ModelList


def model_entries(live: dict[str, list[LiveWorker]]) -> list[Model]:
    return [
        Model(
            id=name,
            created=int(min(w.card.started for w in workers)),
            owned_by="queuechat",
            max_model_len=max((w.card.max_model_len or 0) for w in workers) or None,
        )
        for name, workers in sorted(live.items())
    ]


async def model_list(producer: Producer) -> ModelList:
    return ModelList(data=model_entries(await producer.live_models()))
