"""The model list: the live models with at least one worker, as OpenAI's ``/v1/models`` shows them."""

from __future__ import annotations

from typing import Any

from broker.producer import Producer
from broker.registry import LiveWorker


def model_entries(live: dict[str, list[LiveWorker]]) -> list[dict[str, Any]]:
    return [
        {
            "id": name,
            "object": "model",
            "created": int(min(w.card.started for w in workers)),
            "owned_by": "queuechat",
            "max_model_len": max((w.card.max_model_len or 0) for w in workers) or None,
        }
        for name, workers in sorted(live.items())
    ]


async def live_model_entries(producer: Producer) -> list[dict[str, Any]]:
    return model_entries(await producer.live_models())
