"""A job that finished, yet is pending again to the live worker that ran it, as after Redis restarted from an
append-only file written once a second (the acknowledgement was among the writes lost): the worker acknowledges it
without running it again, so no phantom entry stays pending. Before, only dead workers' entries were looked at, and
the entry stayed pending (counted as running) forever."""

from __future__ import annotations

import time

import httpx

from broker.connection import sync_client
from broker.keys import CONSUMER_GROUP, Keys
from broker.schemas import Job, JobKind, SamplingParams
from broker.settings import Settings
from tests.conftest import Stack, wait_for

# What Redis holds again after such a restart: the job's entry, delivered to its worker and not acknowledged. One
# script, so the live worker's own reads never see the entry as a new job.
PENDING_AGAIN = """
redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
"""


def test_a_finished_job_pending_again_is_acknowledged_without_running_again(stack: Stack, settings: Settings) -> None:
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    keys = Keys(settings.key_prefix)
    stream = keys.jobs("tiny")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    reply = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200
    job_id = "job-" + reply.json()["id"].removeprefix("chatcmpl-")  # the response id is the job's
    wait_for(lambda: client.xpending(stream, CONSUMER_GROUP)["pending"] == 0)
    log_before = client.xrange(keys.log(job_id))
    assert len(log_before) > 2  # what the front server recorded, accepted, deltas, done
    completed_before = int(client.hget(keys.stats("tiny"), "completed") or 0)

    # The job as its front server queued it (its entry was deleted when the job was acknowledged).
    job = Job(
        id=job_id,
        kind=JobKind.CHAT,
        model="tiny",
        messages=body["messages"],
        params=SamplingParams(max_tokens=8, temperature=0),
        deadline=time.time() + 60,
    )
    client.eval(PENDING_AGAIN, 1, stream, CONSUMER_GROUP, stack.worker.id, job.model_dump_json())
    assert client.xpending(stream, CONSUMER_GROUP)["pending"] == 1

    wait_for(lambda: client.xpending(stream, CONSUMER_GROUP)["pending"] == 0, timeout=20)
    assert client.xlen(stream) == 0  # acknowledged and deleted, like every finished job
    assert client.xrange(keys.log(job_id)) == log_before  # not run again: nothing more was published
    assert int(client.hget(keys.stats("tiny"), "completed") or 0) == completed_before  # nor counted twice
