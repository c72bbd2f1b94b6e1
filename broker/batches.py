"""Files and batches as Redis records: what the Batch API stores, what a batch worker updates, what info shows.

A file is a hash (``meta``: its OpenAI object as JSON, ``path``: where its bytes are). A batch is a hash of its
OpenAI fields, one field each (``status``, ``in_progress_at``, ``output_file_id``, live ``completed``/``failed``
counts...), so the API's cancel and the batch worker's progress never overwrite each other's writes; status
changes are compare-and-set. Both carry ``owner``, the digest of the API key that made them (a batch's result
files get its batch's), as stored responses do: the API shows a record only to its owner.
``{{p}:batches}:done:{id}`` records every finished line's custom_id, and a lease key with a TTL says which batch worker
runs the batch, so a dead one's batch is found and resumed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio as aredis

from broker.decode import text, text_map
from broker.keys import Keys


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
_TIMESTAMPS = [f"{s.value}_at" for s in BatchStatus if s is not BatchStatus.VALIDATING]

# Move a batch to ARGV[1] (stamping ARGV[1]_at with ARGV[2]) only from one of the statuses ARGV[3..]. Returns 1,
# or the status it found, so a cancel racing the batch worker's own transitions cannot be lost or undone.
SET_STATUS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
for i = 3, #ARGV do
  if ARGV[i] == current then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
    return 1
  end
end
return current
"""
# Record a finished line once, and count it only the first time (a resumed batch may report a line again).
MARK_DONE_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  return 1
end
return 0
"""
RENEW_LEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_LEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def batch_object(raw: dict[Any, Any]) -> dict[str, Any]:
    """The OpenAI batch object from its hash."""
    fields = text_map(raw)
    obj: dict[str, Any] = json.loads(fields["meta"])
    obj["status"] = fields["status"]
    for name in _TIMESTAMPS:
        obj[name] = int(float(fields[name])) if name in fields else None
    obj["output_file_id"] = fields.get("output_file_id")
    obj["error_file_id"] = fields.get("error_file_id")
    obj["errors"] = json.loads(fields["errors"]) if "errors" in fields else None
    obj["request_counts"] = {
        "total": int(fields.get("total", 0)),
        "completed": int(fields.get("completed", 0)),
        "failed": int(fields.get("failed", 0)),
    }
    return obj


@dataclass
class FileRecord:
    obj: dict[str, Any]  # the OpenAI file object
    path: str  # where its bytes are
    owner: str  # "" for a record from before owners were kept: it belongs to no key


def file_record(raw: dict[Any, Any]) -> FileRecord:
    """A file from its hash."""
    fields = text_map(raw)
    return FileRecord(json.loads(fields["meta"]), fields["path"], fields.get("owner", ""))


class BatchStore:
    """Files' and batches' records, for the API and the batch worker (async clients)."""

    def __init__(self, client: aredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._set_status = client.register_script(SET_STATUS_SCRIPT)
        self._mark_done = client.register_script(MARK_DONE_SCRIPT)
        self._renew = client.register_script(RENEW_LEASE_SCRIPT)
        self._release = client.register_script(RELEASE_LEASE_SCRIPT)

    # ------------------------------------------------------------------ files

    async def add_file(self, obj: dict[str, Any], path: str, owner: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.file(obj["id"]), mapping={"meta": json.dumps(obj), "path": path, "owner": owner})
        pipe.zadd(self.keys.files, {obj["id"]: obj["created_at"]})
        await pipe.execute()

    async def file(self, file_id: str, owner: str | None = None) -> tuple[dict[str, Any], str] | None:
        """A file's OpenAI object and the path of its bytes, or None: there is none, or ``owner`` is given and the
        file belongs to another key (a record from before owners were kept belongs to no key: "")."""
        raw = await self.client.hgetall(self.keys.file(file_id))
        if not raw:
            return None
        record = file_record(raw)
        if owner is not None and record.owner != owner:
            return None
        return record.obj, record.path

    async def files_of(self, owner: str) -> list[dict[str, Any]]:
        """The OpenAI objects of the owner's files, newest first."""
        ids = [text(i) for i in await self.client.zrevrange(self.keys.files, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for file_id in ids:
            pipe.hmget(self.keys.file(file_id), "meta", "owner")
        found = []
        for meta, file_owner in await pipe.execute():
            if meta is not None and text(file_owner or b"") == owner:
                found.append(json.loads(meta))
        return found

    async def delete_file(self, file_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.file(file_id))
        pipe.zrem(self.keys.files, file_id)
        await pipe.execute()

    # ------------------------------------------------------------------ batches

    async def add_batch(self, meta: dict[str, Any], total: int, rq_job_id: str, owner: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self.keys.batch(meta["id"]),
            mapping={
                "meta": json.dumps(meta),
                "status": BatchStatus.VALIDATING.value,
                "total": total,
                "rq_job_id": rq_job_id,
                "owner": owner,
            },
        )
        pipe.zadd(self.keys.batches, {meta["id"]: meta["created_at"]})
        await pipe.execute()

    async def batch_fields(self, batch_id: str) -> dict[str, str] | None:
        raw = await self.client.hgetall(self.keys.batch(batch_id))
        return text_map(raw) if raw else None

    async def batch(self, batch_id: str, owner: str | None = None) -> dict[str, Any] | None:
        """The OpenAI batch object, or None: there is none, or ``owner`` is given and it belongs to another key."""
        raw = await self.client.hgetall(self.keys.batch(batch_id))
        if not raw or (owner is not None and text_map(raw).get("owner", "") != owner):
            return None
        return batch_object(raw)

    async def batches_of(self, owner: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """A page of the owner's batches, newest first, after the batch ``after`` (an id of another owner, or none
        at all, gives an empty page); and whether more follow."""
        ids = await self.batch_ids()
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page: list[dict[str, Any]] = []
        chunk = limit + 1
        for start in range(0, len(ids), chunk):  # read in chunks: most ids may be other owners'
            pipe = self.client.pipeline(transaction=False)
            for batch_id in ids[start : start + chunk]:
                pipe.hgetall(self.keys.batch(batch_id))
            for raw in await pipe.execute():
                if raw and text_map(raw).get("owner", "") == owner:
                    page.append(batch_object(raw))
            if len(page) > limit:
                return page[:limit], True
        return page, False

    async def batch_ids(self, start: int = 0, stop: int = -1) -> list[str]:
        """Batch ids, newest first."""
        return [text(i) for i in await self.client.zrevrange(self.keys.batches, start, stop)]

    async def status(self, batch_id: str) -> BatchStatus | None:
        value = await self.client.hget(self.keys.batch(batch_id), "status")
        return BatchStatus(text(value)) if value is not None else None

    async def set_status(self, batch_id: str, to: BatchStatus, *, allowed_from: set[BatchStatus]) -> bool:
        """Move the batch to ``to`` if its status is one of ``allowed_from``; False (nothing changed) otherwise."""
        result = await self._set_status(
            keys=[self.keys.batch(batch_id)], args=[to.value, time.time(), *(s.value for s in allowed_from)]
        )
        return bool(result == 1)

    async def set_fields(self, batch_id: str, **fields: str | int) -> None:
        await self.client.hset(self.keys.batch(batch_id), mapping=fields)  # type: ignore[arg-type]

    async def done_ids(self, batch_id: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.keys.batch_done(batch_id))
        return text_map(raw)

    async def mark_done(self, batch_id: str, custom_id: str, ok: bool) -> None:
        await self._mark_done(
            keys=[self.keys.batch_done(batch_id), self.keys.batch(batch_id)],
            args=[custom_id, "completed" if ok else "failed"],
        )

    # ------------------------------------------------------------------ the lease of the running batch worker

    async def take_lease(self, batch_id: str, owner: str, ttl: float) -> bool:
        return bool(await self.client.set(self.keys.batch_lease(batch_id), owner, nx=True, px=int(ttl * 1000)))

    async def renew_lease(self, batch_id: str, owner: str, ttl: float) -> bool:
        return bool(await self._renew(keys=[self.keys.batch_lease(batch_id)], args=[owner, int(ttl * 1000)]))

    async def release_lease(self, batch_id: str, owner: str) -> None:
        await self._release(keys=[self.keys.batch_lease(batch_id)], args=[owner])


class BatchRecords:
    """The batch records as a batch worker's orphan scan reads them, between rq jobs (a sync client). The same
    records and parsers as :class:`BatchStore`."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def batch_ids(self) -> list[str]:
        """Batch ids, newest first."""
        ids: list[Any] = self.client.zrevrange(self.keys.batches, 0, -1)
        return [text(i) for i in ids]

    def batch_fields(self, batch_id: str) -> dict[str, str] | None:
        raw: dict[Any, Any] = self.client.hgetall(self.keys.batch(batch_id))
        return text_map(raw) if raw else None

    def leased(self, batch_id: str) -> bool:
        """Whether a batch worker holds the batch's lease now."""
        return bool(self.client.exists(self.keys.batch_lease(batch_id)))

    def set_run(self, batch_id: str, rq_job_id: str, runs: int) -> None:
        """Record the rq job of the batch's next run, and how many runs it has had."""
        self.client.hset(self.keys.batch(batch_id), mapping={"rq_job_id": rq_job_id, "runs": runs})


@dataclass
class BatchProgress:
    """One batch as ``queuechat info`` shows it."""

    id: str
    status: str
    endpoint: str
    total: int
    completed: int
    failed: int
    created_at: int
    running: bool  # a batch worker holds its lease now

    @property
    def done(self) -> int:
        return self.completed + self.failed


def batch_progress(client: redis.Redis, keys: Keys, limit: int = 20) -> list[BatchProgress]:
    """The newest ``limit`` batches with their progress, in one round trip after the index read."""
    ids = [text(i) for i in client.zrevrange(keys.batches, 0, limit - 1)]
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for batch_id in ids:
        pipe.hgetall(keys.batch(batch_id))
        pipe.exists(keys.batch_lease(batch_id))
    replies = pipe.execute()
    out = []
    for raw, leased in zip(replies[::2], replies[1::2], strict=True):
        if not raw:
            continue
        obj = batch_object(raw)
        counts = obj["request_counts"]
        out.append(
            BatchProgress(
                id=obj["id"],
                status=obj["status"],
                endpoint=obj["endpoint"],
                total=counts["total"],
                completed=counts["completed"],
                failed=counts["failed"],
                created_at=obj["created_at"],
                running=bool(leased),
            )
        )
    return out
