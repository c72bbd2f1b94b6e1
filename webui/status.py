"""Which models are live, with how many workers, and how deep their queues are: the UI's status strip."""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from broker.decode import stream_load, texts
from broker.errors import BrokerUnavailable
from broker.producer import Producer


@dataclass(frozen=True)
class ModelLoad:
    model: str
    workers: int
    running: int  # delivered to a worker, not yet acknowledged
    waiting: int  # still in the stream, not yet read by any worker


async def live_models(producer: Producer) -> list[str]:
    """The live models a person can chat with: an embeddings model answers no chat, so it is never offered."""
    live = await producer.live_models()
    return sorted(name for name, workers in live.items() if any(not w.card.embeddings for w in workers))


async def model_loads(producer: Producer) -> list[ModelLoad]:
    """One line per live model, in one round trip after the registry's (two once API keys have streams of their
    own: broker/fairness.py), with the commands the ``front`` ACL role allows. Raises :class:`BrokerUnavailable`
    when Redis does not answer."""
    live = await producer.live_models()
    models = sorted(live)
    keys = producer.keys
    try:
        pipe = producer.client.pipeline(transaction=False)
        for model in models:
            pipe.hkeys(keys.fair_streams(model))
            pipe.xinfo_groups(keys.jobs(model))
            pipe.xlen(keys.jobs(model))
        replies = await pipe.execute(raise_on_error=False)  # no group yet: XINFO answers with an error
        fair = [(m, s) for i, m in enumerate(models) for s in texts(replies[3 * i])]
        counts = [(m, replies[3 * i + 1], replies[3 * i + 2]) for i, m in enumerate(models)]
        if fair:
            pipe = producer.client.pipeline(transaction=False)
            for _, stream in fair:
                pipe.xinfo_groups(stream)
                pipe.xlen(stream)
            more = await pipe.execute(raise_on_error=False)
            counts += [(m, more[2 * i], more[2 * i + 1]) for i, (m, _) in enumerate(fair)]
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc
    running = dict.fromkeys(models, 0)
    waiting = dict.fromkeys(models, 0)
    for model, groups, length in counts:
        load = stream_load(groups, length)
        running[model] += load.running
        waiting[model] += load.waiting
    return [ModelLoad(m, len(live[m]), running[m], waiting[m]) for m in models]


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
