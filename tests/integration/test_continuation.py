"""Mid-stream failover in one process: a worker that takes over a dead worker's job continues it from the tokens
the job's log says its client already has, so the client sees the same answer as without the fault."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from broker.connection import async_client, sync_client
from broker.consumer import Delivery, JobConsumer
from broker.jobevents import JobEvents
from broker.keys import Keys, new_job_id
from broker.monitor import snapshot
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus, live_workers
from broker.schemas import Accepted, Delta, Done, Job, JobKind, SamplingParams
from broker.settings import Settings
from tests.conftest import RunningWorker, wait_for
from workers.admission import CONTINUATION_SEED_STEP, continuation_seed

MAX_TOKENS = 24


async def _collect(events: JobEvents) -> tuple[str, list[int], list[Done]]:
    text, ids, done = [], [], []
    async for event in events:
        if isinstance(event, Delta):
            text.append(event.text)
            ids += event.token_ids
        elif isinstance(event, Done):
            done.append(event)
    events.close()
    return "".join(text), ids, done


def test_continuation_seed() -> None:
    assert continuation_seed(None, 5) is None
    assert continuation_seed(7, 0) == 7
    assert continuation_seed(7, 3) == (7 + 3 * CONTINUATION_SEED_STEP) % 2**64
    assert continuation_seed(-1, 1) is not None and 0 <= continuation_seed(-1, 1) < 2**64  # type: ignore[operator]


async def test_a_job_taken_over_mid_stream_continues_where_it_stopped(
    settings: Settings, start_worker: Callable[..., RunningWorker]
) -> None:
    assert settings.redis_url
    fast = settings.model_copy(update={"claim_min_idle": 0.05})
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    producer = Producer(async_client(settings.redis_url), fast)
    first = start_worker(settings_=fast)
    try:
        wait_for(lambda: live_workers(client, keys), 30)

        def job(**params: object) -> Job:
            return Job(
                kind=JobKind.COMPLETION,
                model="tiny",
                prompt="Tell me a story about queues",
                params=SamplingParams(max_tokens=MAX_TOKENS, **params),
                deadline=time.time() + 120,
            )

        greedy = job(temperature=0)
        reference = await _collect(await producer.submit(greedy))
        seeded = job(temperature=1.0, seed=1234)
        seeded_reference = await _collect(await producer.submit(seeded))
        assert len(reference[1]) == MAX_TOKENS
        logs = JobConsumer(client, keys, ["tiny"], "reader").read_logs([greedy.id, seeded.id])
        first.stop()

        # A front server's view of a live model (a card with a heartbeat) while no real worker runs, and a worker
        # "ghost" (no heartbeat: dead) that took copies of the jobs and published their first tokens.
        WorkerRegistration(client, keys, WorkerCard(id="front-view", models=["tiny"]), ttl=60).heartbeat(WorkerStatus())
        ghost = JobConsumer(client, keys, ["tiny"], "ghost")
        # (job, how many of its deltas the ghost sent before dying); 99: all of them, but not its done
        plan = [(greedy, 1), (greedy, 7), (greedy, 99), (seeded, 5), (seeded, 5)]
        copies: list[JobEvents] = []
        for original, sent in plan:
            copy = original.model_copy(update={"id": new_job_id(original.model)})  # its keys on its model's slot
            events = await producer.submit(copy)
            (delivery,) = wait_for(lambda: ghost.read(1, 100), 10)
            assert isinstance(delivery, Delivery) and delivery.job.id == copy.id
            past, deltas = [], 0
            for event in logs[original.id].events:
                if isinstance(event, Delta):
                    if deltas >= sent:
                        break
                    deltas += 1
                elif isinstance(event, Done):
                    break
                past.append((copy.id, event))
            assert deltas == sent or sent == 99
            ghost.publish(past)
            copies.append(events)

        start_worker(settings_=fast)  # takes the jobs over once the ghost's heartbeat is seen to be missing
        results = await asyncio.wait_for(asyncio.gather(*(_collect(e) for e in copies)), 120)
    finally:
        await producer.close()

    for (original, sent), (text, ids, done), events in zip(plan, results, copies, strict=True):
        assert len(done) == 1 and done[0].usage.completion_tokens == MAX_TOKENS, (sent, done)
        assert len(ids) == MAX_TOKENS
        if original is greedy:
            assert (text, ids) == reference[:2], f"greedy continuation after {sent} tokens differs"
        assert events.continued == 1, sent
    seeded_a, seeded_b = results[3], results[4]
    assert seeded_a[:2] == seeded_b[:2]  # a seeded continuation is reproducible
    assert seeded_a[1][:5] == seeded_reference[1][:5]
    stats = {k.decode(): int(v) for k, v in client.hgetall(keys.stats("tiny")).items()}
    assert stats["continued"] == len(plan) and stats["reclaimed"] == len(plan)
    (queue,) = snapshot(client, keys, ["tiny"]).queues  # what queuechat info and /metrics show
    assert queue.continued == len(plan)


def test_a_continued_accepted_is_not_a_restart() -> None:
    """The API passes over a continuation's ``accepted`` (it carries the next seq) instead of starting over."""
    assert Accepted(seq=5, worker="w", attempt=2, prompt_tokens=1).seq == 5


VERDICTS = {
    "type": "object",
    "properties": {
        "verdicts": {
            "type": "array",
            "minItems": 4,
            "maxItems": 4,
            "items": {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
                      "required": ["answer", "sure"], "additionalProperties": False},
        }
    },
    "required": ["verdicts"],
    "additionalProperties": False,
}  # fmt: skip


async def test_a_constrained_job_continues_under_its_grammar(
    settings: Settings, start_worker: Callable[..., RunningWorker]
) -> None:
    """A job under a JSON schema, taken over after any number of tokens (one, a few, all but its done), goes on with
    its grammar where the dead worker's stood: the same text and tokens as without the fault, valid JSON."""
    assert settings.redis_url
    fast = settings.model_copy(update={"claim_min_idle": 0.05})
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    producer = Producer(async_client(settings.redis_url), fast)
    first = start_worker(settings_=fast)
    try:
        wait_for(lambda: live_workers(client, keys), 30)
        constrained = Job(
            kind=JobKind.COMPLETION,
            model="tiny",
            prompt="Answer as JSON",
            params=SamplingParams(max_tokens=200, temperature=0, json_schema=VERDICTS),
            deadline=time.time() + 120,
        )
        reference = await _collect(await producer.submit(constrained))
        text, ids, done = reference
        assert done[0].finish_reason == "stop" and len(ids) > 12, "the grammar must end the reference, not max_tokens"
        log = JobConsumer(client, keys, ["tiny"], "reader").read_logs([constrained.id])[constrained.id]
        first.stop()

        WorkerRegistration(client, keys, WorkerCard(id="front-view", models=["tiny"]), ttl=60).heartbeat(WorkerStatus())
        ghost = JobConsumer(client, keys, ["tiny"], "ghost")
        cuts = [1, 7, len(ids) // 2, 99]  # deltas the ghost sent before dying; 99: all of them, but not its done
        copies: list[JobEvents] = []
        for sent in cuts:
            copy = constrained.model_copy(update={"id": new_job_id(constrained.model)})
            events = await producer.submit(copy)
            (delivery,) = wait_for(lambda: ghost.read(1, 100), 10)
            assert isinstance(delivery, Delivery) and delivery.job.id == copy.id
            past, deltas = [], 0
            for event in log.events:
                if isinstance(event, Delta):
                    if deltas >= sent:
                        break
                    deltas += 1
                elif isinstance(event, Done):
                    break
                past.append((copy.id, event))
            ghost.publish(past)
            copies.append(events)

        start_worker(settings_=fast)
        results = await asyncio.wait_for(asyncio.gather(*(_collect(e) for e in copies)), 120)
    finally:
        await producer.close()

    for sent, (got_text, got_ids, got_done), events in zip(cuts, results, copies, strict=True):
        assert (got_text, got_ids) == (text, ids), f"constrained continuation after {sent} tokens differs"
        assert [d.finish_reason for d in got_done] == ["stop"], sent
        assert events.continued == 1, sent
        assert len(json.loads(got_text)["verdicts"]) == 4
