"""Every Redis name queuechat uses, built in one place and readable back (for the info monitor).

Names carry Redis Cluster hash tags (the part in braces decides the slot), so that every script and every
pipeline of one step stays on one shard of a cluster (on a single Redis the tags are only part of the name):

- a model's keys share the tag of its name (``{model}``): its streams and group, stats and dead letters live on one
  shard, and the scripts over a stream and the job's log touch one slot.
- a job's keys and channel (``{t}``, see :func:`job_tag`) share their model's slot: the job id begins with the
  model's slot number (:func:`new_job_id`), and ``t`` is a short tag of that same slot, so whoever knows only a job
  id (a client resuming a stream by its id) finds its log, with no lookup and no model name in the id.
- the registry (``{p}``: workers hash, heartbeats, left marks) has its own tag, so its MGETs are one command.
- files (index and records) share one tag, and batches (index, records, finished lines, leases) another: a MULTI
  adds a record with its index entry, a script marks a batch line done and counts it in the record. Stored
  Responses are untagged: each is one key read or written alone, so they spread over the shards.
- a tenant's counters share the tag of its name (broker/tenants.py): its limit scripts touch them together.

| name                        | type     | holds                                             |
|-----------------------------|----------|---------------------------------------------------|
| ``{p}:jobs:{model}``        | stream   | queued and running jobs, consumer group ``workers`` |
| ``{p}:events:{t}:{job_id}`` | pub/sub  | a job's events, for the front server that sent it (sharded on a cluster) |
| ``{p}:log:{t}:{job_id}``    | stream   | the same events, kept to catch up and to resume   |
| ``{p}:cancel:{t}:{job_id}`` | string   | set by a front server whose client left (short TTL) |
| ``{p}:deaths:{t}:{job_id}`` | string   | workers that died holding the job (TTL)           |
| ``{{p}}:workers``           | hash     | worker id -> JSON card                            |
| ``{{p}}:worker:{id}``       | string   | heartbeat with TTL; value = live stats JSON       |
| ``{{p}}:left:{id}``         | string   | a worker left cleanly, handing its jobs back (TTL) |
| ``{p}:stats:{model}``       | hash     | counters (completed, failed, tokens, ...)         |
| ``{p}:dead:{model}``        | stream   | dead-lettered jobs                                |
| ``{p}:batch:{model}``       | stream   | batch lines: read only when ``jobs`` gives nothing |
| ``{p}:fair:{model}:<tenant>:<n>`` | stream | a tenant's jobs of priority n, group ``workers`` (broker/fairness.py) |
| ``{p}:fairstreams:{model}`` | hash     | tenant stream -> "tenant<TAB>priority": the streams workers read |
| ``{p}:drr:{model}``         | hash     | round robin: whose turn, jobs left in it, each tenant's weight |
| ``{{p}:files}``             | zset     | file ids by creation time                         |
| ``{{p}:files}:{id}``        | hash     | a file's metadata (JSON) and where it is stored   |
| ``{{p}:batches}``           | zset     | batch ids by creation time                        |
| ``{{p}:batches}:{id}``      | hash     | a batch: its fields, status and live counts       |
| ``{{p}:batches}:done:{id}`` | hash     | custom_id -> ok/failed, for every finished line   |
| ``{{p}:batches}:lease:{id}``| string   | the batch worker running the batch, with a TTL    |
| ``{p}:responses:{id}``      | hash     | a stored Response: owner, status, object, conversation; TTL |

(In the table, ``{model}``, ``{t}`` and the outer braces of ``{{p}}``, ``{{p}:files}`` and ``{{p}:batches}`` are
literal: the hash tags.)
"""

from __future__ import annotations

import functools
import itertools
import re
import string
import uuid
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

CONSUMER_GROUP = "workers"
# The entry of a job's event log that holds what the front server recorded at submission (owner, request).
LOG_META_ID = "0-1"


def log_entry_id(seq: int) -> str:
    """The id of event ``seq`` in a job's log: ids grow with ``seq`` and no two events share one."""
    return f"{seq + 1}-0"


def seq_of_log_id(entry_id: str | bytes) -> int:
    """The ``seq`` an event log entry id stands for (the inverse of :func:`log_entry_id`)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) - 1


def hash_tag(name: str) -> str:
    """``name`` as a Redis Cluster hash tag: keys that carry the same tag are on the same slot."""
    return "{" + name + "}"


def model_slot(model: str) -> int:
    """The cluster slot of every key of ``model`` (the slot of its tag)."""
    return key_slot(hash_tag(model).encode())


_JOB_ID = re.compile(r"^job-([0-9a-f]{4})[0-9a-f]{28}$")


def new_job_hex(model: str) -> str:
    """32 random hex digits that begin with ``model``'s slot (4 digits: slots are below 16384), so that the keys of
    a job can be found from its id alone. The API's ids (``chatcmpl-``, ``resp_``) are this same hex."""
    return f"{model_slot(model):04x}{uuid.uuid4().hex[4:]}"


def new_job_id(model: str) -> str:
    return "job-" + new_job_hex(model)


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest tag (1 to 3 letters or digits, found once, ~30 ms) that hashes to it."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    alphabet = string.digits + string.ascii_letters
    for length in (1, 2, 3):
        for letters in itertools.product(alphabet, repeat=length):
            tag = "".join(letters)
            slot = key_slot(hash_tag(tag).encode())
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
    assert missing == 0, "three letters reach every slot"
    return tuple(t for t in tags if t is not None)


def job_tag(job_id: str) -> str:
    """The hash tag of a job's keys: a tag of its model's slot, read from the id (see :func:`new_job_id`). An id
    of another shape (made by hand) gets a tag of its own: its keys are together, but not with its model's."""
    match = _JOB_ID.match(job_id)
    if match is None or int(match[1], 16) >= REDIS_CLUSTER_HASH_SLOTS:
        return hash_tag(job_id)
    return hash_tag(_slot_tags()[int(match[1], 16)])


@dataclass(frozen=True)
class Keys:
    prefix: str = "qc"

    def jobs(self, model: str) -> str:
        return f"{self.prefix}:jobs:{hash_tag(model)}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_tag(job_id)}:{job_id}"

    def log(self, job_id: str) -> str:
        """A job's event log: entry ``0-1`` is what the front server recorded at submission (see
        :data:`LOG_META_ID`), then event ``seq`` N is entry ``{N + 1}-0``; an error outside ``seq`` takes an
        automatic id (later than any). Capped, and expiring a while after the job ends."""
        return f"{self.prefix}:log:{job_tag(job_id)}:{job_id}"

    def cancel(self, job_id: str) -> str:
        """Set when a job's client hung up, so its worker cancels it at once rather than waiting for a resume."""
        return f"{self.prefix}:cancel:{job_tag(job_id)}:{job_id}"

    def logs_pattern(self) -> str:
        """A SCAN pattern that matches every event log."""
        return f"{self.prefix}:log:*"

    @property
    def registry_tag(self) -> str:
        """The registry's keys share the prefix as their tag: a worker's heartbeat and left mark, and every
        worker's card, are read together (MGET, pipelines) and so must be on one slot."""
        return hash_tag(self.prefix)

    @property
    def workers(self) -> str:
        return f"{self.registry_tag}:workers"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.registry_tag}:worker:{worker_id}"

    def left(self, worker_id: str) -> str:
        """Set when a worker deregisters after handing its unfinished jobs back: whoever takes them over then
        knows their worker did not die of them."""
        return f"{self.registry_tag}:left:{worker_id}"

    def deaths(self, job_id: str) -> str:
        """How many workers died (killed, out of memory, wedged) while they held the job."""
        return f"{self.prefix}:deaths:{job_tag(job_id)}:{job_id}"

    def stats(self, model: str) -> str:
        return f"{self.prefix}:stats:{hash_tag(model)}"

    def dead(self, model: str) -> str:
        return f"{self.prefix}:dead:{hash_tag(model)}"

    def batch_jobs(self, model: str) -> str:
        """The low-priority stream of a model: batch lines wait here until no interactive job is waiting."""
        return f"{self.prefix}:batch:{hash_tag(model)}"

    def fair_jobs(self, model: str, tenant: str, priority: int) -> str:
        """The stream of one tenant's jobs of one priority (``tenant`` "": requests without a key, whose priority-0
        jobs stay on :meth:`jobs`). Not matched by :meth:`jobs_pattern`: the model's streams are listed in
        :meth:`fair_streams`. A tenant's name has no colon, so the name reads back unambiguously from the right."""
        return f"{self.prefix}:fair:{hash_tag(model)}:{tenant}:{priority}"

    def fair_streams(self, model: str) -> str:
        """The model's tenant streams (hash: stream -> "tenant<TAB>priority"), for the workers' read script."""
        return f"{self.prefix}:fairstreams:{hash_tag(model)}"

    def fair_state(self, model: str) -> str:
        """The model's deficit round robin state (hash: ``turn``, ``left``, ``w:{tenant}`` weights)."""
        return f"{self.prefix}:drr:{hash_tag(model)}"

    # Files and batches each have one tag of their own: a MULTI adds (or deletes) a record with its index entry, and a
    # script marks a batch's line done and counts it in the batch's record, so all of one kind live on one slot.
    # They are small records, written a few times per file or per batch line: one shard holds them easily.
    @property
    def files(self) -> str:
        return hash_tag(f"{self.prefix}:files")

    def file(self, file_id: str) -> str:
        return f"{self.files}:{file_id}"

    @property
    def batches(self) -> str:
        return hash_tag(f"{self.prefix}:batches")

    def batch(self, batch_id: str) -> str:
        return f"{self.batches}:{batch_id}"

    def batch_done(self, batch_id: str) -> str:
        return f"{self.batches}:done:{batch_id}"

    def batch_lease(self, batch_id: str) -> str:
        return f"{self.batches}:lease:{batch_id}"

    def jobs_pattern(self) -> str:
        """A SCAN pattern that matches every job stream."""
        return f"{self.prefix}:jobs:*"

    def model_of_jobs(self, key: str | bytes) -> str:
        """The model name a job stream key belongs to (the inverse of :meth:`jobs` and :meth:`batch_jobs`)."""
        text = key.decode() if isinstance(key, bytes) else key
        for head in (f"{self.prefix}:jobs:{{", f"{self.prefix}:batch:{{"):
            if text.startswith(head) and text.endswith("}"):
                return text[len(head) : -1]
        raise ValueError(f"{text!r} is not a job stream of prefix {self.prefix!r}")

    def job_of_events(self, channel: str | bytes) -> str:
        """The job id an events channel belongs to (the inverse of :meth:`events`)."""
        text = channel.decode() if isinstance(channel, bytes) else channel
        tagged = text[len(self.prefix) + len(":events:") :]  # {tag}:job_id
        return tagged.split("}:", 1)[1] if tagged.startswith("{") and "}:" in tagged else tagged

    def response(self, response_id: str) -> str:
        """A stored Response of the Responses API (see :mod:`broker.responses`)."""
        return f"{self.prefix}:responses:{response_id}"
