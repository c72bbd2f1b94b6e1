"""Which models are live, with how many workers, and how deep their queues are: the UI's status strip."""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError

from broker.errors import BrokerUnavailable
from broker.keys import CONSUMER_GROUP
from broker.producer import Producer


@dataclass(frozen=True)
class ModelLoad:
    model: str
    workers: int
    running: int  # delivered to a worker, not yet acknowledged
    waiting: int  # still in the stream, not yet read by any worker


async def live_models(producer: Producer) -> list[str]:
    return sorted(await producer.live_models())


async def model_loads(producer: Producer) -> list[ModelLoad]:
    """One line per live model. Raises :class:`BrokerUnavailable` when Redis does not answer."""
    live = await producer.live_models()
    loads = []
    for model, workers in sorted(live.items()):
        stream = producer.keys.jobs(model)
        try:
            length = await producer.client.xlen(stream)
            try:
                pending = int((await producer.client.xpending(stream, CONSUMER_GROUP))["pending"])
            except ResponseError:  # the group appears with the first worker; until then nothing is running
                pending = 0
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
        # acknowledged entries are deleted, so the stream holds exactly the running and the waiting jobs
        loads.append(ModelLoad(model, len(workers), pending, max(length - pending, 0)))
    return loads


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def status_markdown(loads: list[ModelLoad]) -> str:
    if not loads:
        return "No worker is serving any model right now. Start one with `queuechat worker`."
    return "  ·  ".join(
        f"**{m.model}**: {plural(m.workers, 'worker')}, {m.running} running, {m.waiting} waiting" for m in loads
    )


async def status_line(producer: Producer) -> str:
    try:
        return status_markdown(await model_loads(producer))
    except BrokerUnavailable:
        return "⚠️ The message broker (Redis) cannot be reached; replies resume when it is back."
