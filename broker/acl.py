"""The Redis ACL rules of each queuechat role, for deployments that give every role its own Redis user.

Three roles: ``front`` (the API and the web UI), ``worker`` and ``monitor`` (``queuechat info``, dashboards: read
only). Each rule set names the keys by the deployment's prefix, the pub/sub channels, and the commands that role's
code sends, so a leaked front-server password cannot read another role's data, run arbitrary commands or flush
Redis. Read-only key selectors (``%R~``) need Redis 7 or Valkey; on Redis 6.2 use plain ``~`` patterns.

    ACL SETUSER <name> on ><password> <rules...>       # rules from :func:`acl_rules`
"""

from __future__ import annotations

from dataclasses import dataclass

# Every connection: health checks, the database, and the client name of the event connection. (redis-py also
# announces itself with CLIENT SETINFO on Redis 7.2+ and carries on when that is refused.)
_CONNECTION = "ping select client|setname"


@dataclass(frozen=True)
class Role:
    keys: tuple[str, ...]  # key patterns under the prefix; "%R~" ones are read-only; "{{{p}}}" is the registry's tag
    channels: tuple[str, ...]  # pub/sub channel patterns under the prefix
    commands: str  # space-separated, as in redis-cli


ROLES: dict[str, Role] = {
    # submit jobs (a Lua script checks the backlog, adds the job and begins its event log in one step), listen to
    # their events (and read their logs), mark jobs whose client left, read the registry (and prune expired cards),
    # look up API keys and count their tenants' limits and usage (Lua scripts too), serve /metrics, and create the
    # job stream and group of a model declared in wait_for_worker that no worker has created yet (scale from zero);
    # a key's first job of a model makes the key's stream (with its group) and lists it for the workers
    # (broker/fairness.py)
    "front": Role(
        keys=(
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
        ),
        channels=("{p}:events:*",),
        commands=f"{_CONNECTION} evalsha script|load script|exists xadd xlen exists hgetall hdel mget subscribe "
        "unsubscribe xgroup|create time scan xinfo|groups xrange pexpire set pubsub|numsub "
        "hlen hget hkeys hincrby get incr decr incrby del pttl hset "
        # on a Redis Cluster: sharded pub/sub, and the slot map
        "ssubscribe sunsubscribe pubsub|shardnumsub cluster|slots",
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
