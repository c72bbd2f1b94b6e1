"""Stored Responses as Redis records: what ``GET``/``DELETE /v1/responses/{id}``, ``input_items``,
``previous_response_id`` and background runs read and write.

A response is one hash, ``{p}:responses:{id}``, with a TTL (``QUEUECHAT_RESPONSES_TTL``, 30 days by default, as
OpenAI keeps responses): ``owner`` (a digest of the API key that made it; empty on a server without keys),
``status``, ``response`` (the Response object as JSON), ``conversation`` (every item the model saw, the previous
responses' included, as JSON: what a follow-up continues from, so a record never depends on an older one that may
have expired) and ``inputs`` (how many of those items were this request's own input, for ``input_items``).
``status`` is authoritative over the object's own: status changes are compare-and-set, so a cancel and the end of
a background run never overwrite each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.decode import text, text_map
from broker.keys import Keys

DEFAULT_TTL = 30 * 24 * 3600
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
RUNNING = ("queued", "in_progress")

# Set status ARGV[1] (and the response JSON ARGV[2] unless empty) only from one of the statuses ARGV[3..].
# Returns 1, or the status it found (false when there is no record), so a cancel racing the end of a run is
# decided once.
SET_STATUS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
for i = 3, #ARGV do
  if ARGV[i] == current then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'response', ARGV[2]) end
    return 1
  end
end
return current
"""


class ResponsesSettings(BaseSettings):
    """The Responses store's own setting, read from the environment like the others (``QUEUECHAT_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="QUEUECHAT_", extra="ignore")
    responses_ttl: int = Field(default=DEFAULT_TTL, gt=0, description="Seconds a stored response is kept.")


@dataclass
class StoredResponse:
    owner: str
    status: str
    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    inputs: int

    @property
    def input_items(self) -> list[dict[str, Any]]:
        return self.conversation[len(self.conversation) - self.inputs :]

    def continued(self) -> list[dict[str, Any]]:
        """The items a follow-up continues from: everything the model saw, then what it answered."""
        output: list[dict[str, Any]] = self.response.get("output") or []
        return [*self.conversation, *output]


def stored_response(raw: dict[Any, Any]) -> StoredResponse:
    """A record from its hash (HGETALL); its ``status`` field is the object's status."""
    fields = text_map(raw)
    response = json.loads(fields["response"])
    response["status"] = fields["status"]
    return StoredResponse(
        owner=fields.get("owner", ""),
        status=fields["status"],
        response=response,
        conversation=json.loads(fields["conversation"]),
        inputs=int(fields["inputs"]),
    )


class ResponseStore:
    def __init__(self, client: aredis.Redis, keys: Keys, ttl: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self._set_status = client.register_script(SET_STATUS_SCRIPT)

    async def add(self, response: dict[str, Any], owner: str, conversation: list[dict[str, Any]], inputs: int) -> None:
        key = self.keys.response(response["id"])
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "owner": owner,
                "status": response["status"],
                "response": json.dumps(response),
                "conversation": json.dumps(conversation),
                "inputs": inputs,
            },
        )
        pipe.expire(key, self.ttl)
        await pipe.execute()

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The record, or None if there is none or it belongs to another key's owner."""
        raw = await self.client.hgetall(self.keys.response(response_id))
        if not raw:
            return None
        record = stored_response(raw)
        return record if record.owner == owner else None

    async def status(self, response_id: str) -> str | None:
        value = await self.client.hget(self.keys.response(response_id), "status")
        return text(value) if value is not None else None

    async def set_status(
        self, response_id: str, to: str, *, allowed_from: tuple[str, ...], response: dict[str, Any] | None = None
    ) -> bool:
        """Move the record to ``to`` (and store ``response`` with it) if its status is one of ``allowed_from``."""
        result = await self._set_status(
            keys=[self.keys.response(response_id)],
            args=[to, json.dumps(response) if response is not None else "", *allowed_from],
        )
        return bool(result == 1)

    async def delete(self, response_id: str) -> None:
        await self.client.delete(self.keys.response(response_id))
