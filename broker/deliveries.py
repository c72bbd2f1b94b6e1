"""Jobs as a worker reads them from the model streams: a :class:`Delivery` to run, or a :class:`Malformed` entry to
acknowledge and count, parsed from XREADGROUP, XCLAIM and fair read replies alike."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from broker.decode import entry_fields, text
from broker.schemas import Job


@dataclass
class Delivery:
    """A job as read from a stream, with what is needed to acknowledge it."""

    stream: str
    entry_id: str
    job: Job

    @property
    def deadline(self) -> float:
        """The job's deadline on Redis's clock, so that no two hosts' clocks need to agree: when it entered its
        stream (the entry id's milliseconds: Redis's clock) plus its time budget (``deadline - created``, both
        stamped by its front server's clock, whose difference does not depend on that clock being right)."""
        queued_at = int(self.entry_id.split("-", 1)[0]) / 1000
        return queued_at + max(self.job.deadline - self.job.created, 0.0)


@dataclass
class Malformed:
    """A stream entry that is not a valid job. It is acknowledged and counted, never run."""

    stream: str
    entry_id: str
    reason: str
    job_id: str | None


def delivery_of(stream: str, entry_id: str, fields: Any, attempt: int = 1) -> Delivery | Malformed:
    """One stream entry (its fields as a client or a script answers them) as the job of its ``attempt``."""
    raw = entry_fields(fields).get("job")
    if raw is None:
        return Malformed(stream, entry_id, "entry has no 'job' field", None)
    try:
        job = Job.model_validate_json(raw)
        return Delivery(stream, entry_id, job.model_copy(update={"attempt": attempt}) if attempt > 1 else job)
    except ValidationError as exc:
        job_id = None
        with contextlib.suppress(ValueError, AttributeError):
            job_id = json.loads(raw).get("id")
        return Malformed(stream, entry_id, f"invalid job: {exc.errors()[0]['msg']}", job_id)


def deliveries_of(reply: Any) -> list[Delivery | Malformed]:
    """The jobs of an XREADGROUP reply (or of a fair read script's, shaped the same: [[stream, entries]...])."""
    return [
        delivery_of(text(stream), text(entry_id), fields)
        for stream, entries in reply or []
        for entry_id, fields in entries
    ]


def claimed_of(stream: str, reply: Any, attempt_of: dict[str, int], least: int = 1) -> list[Delivery | Malformed]:
    """The jobs of an XCLAIM reply, each of its attempt (``attempt_of`` its entry id, at least ``least``); entries
    deleted meanwhile (Redis 6 still lists their ids) are left out."""
    out: list[Delivery | Malformed] = []
    for entry_id, fields in reply or []:
        if fields is None:
            continue
        eid = text(entry_id)
        out.append(delivery_of(stream, eid, fields, attempt=max(attempt_of.get(eid, 1), least)))
    return out
