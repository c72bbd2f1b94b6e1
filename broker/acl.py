"""The Redis ACL rules of each queuechat role, for deployments that give every role its own Redis user.

Four roles: ``front`` (the API and the web UI), ``worker``, ``batch`` (``queuechat batch-worker``) and ``monitor``
(``queuechat info``, dashboards: read only). Each rule set names the keys by the deployment's prefix (and rq's keys,
which carry none), the pub/sub channels, and the commands that role's code sends, so a leaked front-server password
cannot read another role's data, run arbitrary commands or flush Redis. Read-only key selectors (``%R~``) need
Redis 7 or Valkey; on Redis 6.2 use plain ``~`` patterns.

    ACL SETUSER <name> on ><password> <rules...>       # rules from :func:`acl_rules`
"""

from __future__ import annotations

from dataclasses import dataclass

# Every connection: health checks, the database, and the client name of the event connection. (redis-py also
# announces itself with CLIENT SETINFO on Redis 7.2+ and carries on when that is refused.)
_CONNECTION = "ping select client|setname"


@dataclass(frozen=True)
class Role:
    keys: tuple[str, ...]  # key patterns under the prefix (or rq's); "%R~" ones are read-only; "{{{p}}}": a hash tag
    channels: tuple[str, ...]  # pub/sub channel patterns under the prefix (or rq's)
    commands: str  # space-separated, as in redis-cli


# What a front server writes under its prefix; the batch runner submits its lines as a front server does.
_FRONT_KEYS = (
    "%R~{p}:*",
    "%R~{{{p}}}:*",
    "~{p}:jobs:*",
    "~{{{p}}}:workers",
    "~{p}:log:*",
    "~{p}:cancel:*",
    "~{p}:tenant:*",
    "~{p}:fair:*",
    "~{p}:fairstreams:*",
    "~{p}:drr:*",
    "~{{{p}:files}}*",
    "~{{{p}:batches}}*",
)
_FRONT_COMMANDS = (
    f"{_CONNECTION} evalsha script|load script|exists xadd xlen exists hgetall hdel mget subscribe "
    "unsubscribe xgroup|create time scan xinfo|groups xrange pexpire set pubsub|numsub "
    "hlen hget hkeys hincrby get incr decr incrby del pttl hset "
    # the Files and Batch APIs' records
    "multi exec zadd zrevrange zrem hmget "
    # on a Redis Cluster: sharded pub/sub, and the slot map
    "ssubscribe sunsubscribe pubsub|shardnumsub cluster|slots"
)
# Enqueueing an rq job (rq's Queue.enqueue; INFO: rq reads the server's version).
_RQ_ENQUEUE = "rpush sadd info"
# rq's worker (SimpleWorker, no scheduler): register (CLIENT INFO for its address) and heartbeat in rq:worker:*,
# take a job (BLMOVE through the queue's intermediate list; LMOVE with --burst), track its execution, clean the
# registries (finished, failed, wip: an abandoned job is failed), record the result or the failure, listen for
# commands on rq:pubsub:<worker>, and deregister. (Not CLIENT LIST: rq's fallback for a server without CLIENT INFO,
# older than these rules need.)
_RQ_WORKER = (
    "client|info blmove lmove lrange lrem hexists hincrbyfloat srem smembers expire persist watch unwatch "
    "zrange zrangebyscore zremrangebyscore zscore"
)

ROLES: dict[str, Role] = {
    # submit jobs (a Lua script checks the backlog, adds the job and begins its event log in one step), listen to
    # their events (and read their logs), mark jobs whose client left, read the registry (and prune expired cards),
    # look up API keys and count their tenants' limits and usage (Lua scripts too), serve /metrics, and create the
    # job stream and group of a model declared in wait_for_worker that no worker has created yet (scale from zero);
    # a key's first job of a model makes the key's stream (with its group) and lists it for the workers
    # (broker/fairness.py). The Files and Batch APIs: file and batch records (a MULTI adds each with its index
    # entry), and the rq job of a batch run: enqueued (the job's hash, the queue's list, rq's set of queues; rq asks
    # INFO for the server's version), its status read, cancelled while still queued (off the queue's list, into its
    # canceled registry)
    "front": Role(
        keys=(
            *_FRONT_KEYS,
            "~rq:queues",
            "~rq:queue:*",
            "~rq:job:*",
            "~rq:canceled:*",
        ),
        channels=("{p}:events:*",),
        commands=f"{_FRONT_COMMANDS} {_RQ_ENQUEUE} lrem",
    ),
    # consume the streams (interactive before batch, each key's by turns: one Lua script per model), publish events,
    # count, heartbeat, take over a dead worker's jobs (counting the deaths of the workers that held them), dead-letter
    "worker": Role(
        keys=("~{p}:*", "~{{{p}}}:*"),
        channels=("{p}:events:*",),
        commands=f"{_CONNECTION} evalsha script|load script|exists "
        "xgroup|create xreadgroup xack xdel xadd xlen xrange xautoclaim xclaim xpending "
        "xgroup|delconsumer xinfo|groups xinfo|consumers publish pubsub|numsub "
        "hincrby hset hdel hgetall hkeys set get del mget exists time expire pexpire multi exec incrby "
        "spublish pubsub|shardnumsub cluster|slots",
    ),
    # `queuechat batch-worker`: rq's worker on the batch queue, running batches (submitting their lines as a front
    # server does, onto the models' batch streams; the batch's records, its lease, the result files' records) and
    # re-queueing orphaned batches. rq's names cannot carry the deployment's prefix: rq keeps every queue, job, worker
    # and registry under its own "rq:" (its global rq:queues and rq:workers too), so this role writes rq:*. rq:*
    # is shared by the deployments of one Redis, but a queue is "<prefix>-batch" and a job id names its batch (a
    # random id), so they never take or touch each other's runs.
    "batch": Role(
        keys=(*_FRONT_KEYS, "~{p}:batch:*", "~rq:*"),
        channels=("{p}:events:*", "rq:pubsub:*"),
        commands=f"{_FRONT_COMMANDS} {_RQ_ENQUEUE} {_RQ_WORKER} hsetnx",  # HSETNX: a line done, in a script
    ),
    # queuechat info and anything else that only looks
    "monitor": Role(
        keys=("%R~{p}:*", "%R~{{{p}}}:*", "%R~{{{p}:batches}}*"),
        channels=(),
        commands=f"{_CONNECTION} time scan hgetall hkeys mget xinfo|groups xlen xrange zrevrange exists memory|usage "
        "cluster|slots",
    ),
}


def acl_rules(role: str, prefix: str = "qc") -> list[str]:
    """The ACL SETUSER rules (after the user name, ``on`` and the password) of ``role`` for key prefix ``prefix``."""
    spec = ROLES[role]
    return [
        "resetkeys",
        *(k.format(p=prefix) for k in spec.keys),
        "resetchannels",
        *("&" + c.format(p=prefix) for c in spec.channels),
        "-@all",
        *("+" + c for c in spec.commands.split()),
    ]
