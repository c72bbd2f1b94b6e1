"""A job's event log: every event a worker publishes on a job's channel is also appended, in the same pipeline, to a
capped Redis stream of the job (``{prefix}:log:{job_id}``, see :meth:`broker.keys.Keys.log`).

PUBLISH stays the live path. The log is read only to catch up: by a front server after a gap in ``seq`` or a lost
pub/sub connection, by a front server resuming a client's stream (``Last-Event-ID``), and by a worker taking over
a dead worker's job, which continues it from the tokens already sent.

Layout of the stream:

- entry ``0-1`` (:data:`~broker.keys.LOG_META_ID`): written by the front server in the same script that queues the
  job, field ``meta``: JSON ``{"model", "n", "deadline", "resume"?}``. Its presence says the log is whole from the
  start (a log without it was lost, e.g. Redis restarted empty, and is not trusted).
- event ``seq`` N: entry ``{N + 1}-0``, field ``event``: the event's JSON, as published. Explicit ids make a
  duplicate append (two workers believing they own one job) fail instead of forking the log.
- an ``error`` outside ``seq`` (a dead-letter notice, sent with ``seq`` 0 by a worker that never ran the job): an
  automatic id, later than every ``seq`` id.

A worker publishes a job's events only while the job is its own: the check and the publishing are one script
(:data:`FENCED_PUBLISH_SCRIPT`), so a worker back from a stall (or a long cut) after another worker took its job
over is refused, and cannot write a single event after the new owner read the log to continue from it. A publish
that failed is sent again with the same ``seq`` values: an append whose id is already there is that same event,
appended by a try whose reply was lost, and front servers drop an event seen twice.

The log expires ``event_log_ttl`` seconds after the job ends (set by the worker with its last event); until then
it expires at the job's deadline plus that time (set at submission), so an abandoned job's log cannot stay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.decode import entry_fields, text
from broker.keys import LOG_META_ID, log_entry_id
from broker.schemas import AnyEvent, Delta, Done, Error, parse_event

EVENT_FIELD = "event"
META_FIELD = "meta"
# What a fenced publish answers when the job is no longer the worker's (see FENCED_PUBLISH_SCRIPT).
NOT_OWNER = -1

# Publish one job's events if its stream entry is still pending to this worker (XCLAIM by a worker taking the job
# over moves it, XACK ends it), appending each to the job's log first. KEYS[1]: the job's stream, KEYS[2]: its log.
# ARGV: group, entry id, consumer, channel, log maxlen ('' : no log), log TTL in seconds ('' : the job goes on),
# then (log entry id, event JSON) pairs. Returns the last PUBLISH's receivers, or NOT_OWNER.
FENCED_PUBLISH_SCRIPT = """
-- pcall: a stream or group Redis lost (restarted empty) holds no job of anyone's
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending.err or #pending == 0 or pending[1][2] ~= ARGV[3] then return -1 end
local receivers = 0
for i = 7, #ARGV, 2 do
  if ARGV[5] ~= '' then
    -- refused only for an id already there: this very event, from a try whose reply was lost
    redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], ARGV[i], 'event', ARGV[i + 1])
  end
  receivers = redis.call('PUBLISH', ARGV[4], ARGV[i + 1])
end
if ARGV[5] ~= '' and ARGV[6] ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[6]) end
return receivers
"""

# The same on a Redis Cluster: the events go out on sharded pub/sub (the channel shares the job's slot).
SHARDED_FENCED_PUBLISH_SCRIPT = FENCED_PUBLISH_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'")


def entry_id_of(event: AnyEvent) -> str:
    """Where an event goes in its job's log."""
    if isinstance(event, Error):
        return "*"
    return log_entry_id(event.seq)


def meta_json(model: str, n: int, deadline: float, resume: dict[str, Any] | None) -> str:
    meta: dict[str, Any] = {"model": model, "n": n, "deadline": deadline}
    if resume is not None:
        meta["resume"] = resume
    return json.dumps(meta, separators=(",", ":"))


def submission_ttl_ms(deadline: float, ttl: float) -> int:
    """The life a log gets at submission: up to the job's deadline, plus the time kept after a job's end."""
    return max(int((deadline - time.time() + ttl) * 1000), 1000)


@dataclass
class JobLog:
    """A job's log as read back: what the front server recorded, and the events in order."""

    meta: dict[str, Any] | None
    events: list[AnyEvent] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.meta is not None or bool(self.events)

    @property
    def whole(self) -> bool:
        """Written from the job's submission on, so its events are every event of the job."""
        return self.meta is not None

    @property
    def next_seq(self) -> int:
        seqs = [e.seq for e in self.events if not isinstance(e, Error)]
        return max(seqs) + 1 if seqs else 0

    @property
    def error(self) -> Error | None:
        return next((e for e in self.events if isinstance(e, Error)), None)

    def tokens(self, index: int) -> list[int]:
        """The token ids choice ``index`` has sent so far."""
        return [t for e in self.events if isinstance(e, Delta) and e.index == index for t in e.token_ids]

    def done(self, index: int) -> Done | None:
        return next((e for e in self.events if isinstance(e, Done) and e.index == index), None)


def parse_entries(entries: Sequence[Any] | None) -> JobLog:
    """A :class:`JobLog` from an XRANGE reply; entries that do not parse are skipped (never fatal)."""
    out = JobLog(meta=None)
    for entry_id, fields in entries or []:
        values = entry_fields(fields)
        if text(entry_id) == LOG_META_ID:
            try:
                out.meta = json.loads(values.get(META_FIELD, b"{}"))
            except ValueError:
                out.meta = {}
            continue
        raw = values.get(EVENT_FIELD)
        if raw is None:
            continue
        try:
            out.events.append(parse_event(raw))
        except ValueError:
            continue
    return out
