"""API keys as tenants, kept in Redis: each stored as a digest, with a name and limits that every API replica
enforces exactly, in one script per admission.

- ``{prefix}:tenants`` hash: key digest -> the tenant (JSON); ``{prefix}:tenant-names`` hash: name -> digest.
- ``{prefix}:tenant:{{name}}:requests`` and ``:tokens``: the current minute's window, which starts at the first
  request after the last one ended (the key's TTL), so a limit of N per minute admits exactly N in any window;
  ``:running``: requests in flight; ``:usage`` hash: totals (requests, rejected, prompt and completion tokens).
  (``{name}``, in braces, is the counters' hash tag: the limit scripts touch them together, on one cluster slot.)

Tokens are charged as a job is accepted (its prompt plus ``max_tokens`` per choice, reserved) and the unused part
is refunded at each choice's ``done``; a request is refused while the window's charged tokens reach the limit.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.decode import int_map, texts
from broker.fairness import MAX_WEIGHT
from broker.keys import Keys, hash_tag

WINDOW_MS = 60_000
# a request in flight is forgotten after this long even if its API replica died before releasing it
RUNNING_TTL_MS = 3_600_000


class TenantLimits(BaseModel):
    """Zero or None: unlimited (``weight`` is not a limit: it is at least 1)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int = Field(default=0, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)
    concurrent_requests: int = Field(default=0, ge=0)
    models: list[str] | None = None  # the models the key may use; None: all
    # the key's share of a model's workers while other keys' jobs wait too: jobs taken per turn of the round robin
    weight: int = Field(default=1, ge=1, le=MAX_WEIGHT)


class Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    limits: TenantLimits = Field(default_factory=TenantLimits)
    revoked: bool = False

    def allows(self, model: str) -> bool:
        return self.limits.models is None or model in self.limits.models


# The tenant of the request being served: set by the API's key check, read by the producer (which models the key
# may use) and by the token charging of the request's jobs.
current_tenant: contextvars.ContextVar[Tenant | None] = contextvars.ContextVar("queuechat_tenant", default=None)


def digest(secret: str | bytes) -> str:
    raw = secret if isinstance(secret, bytes) else secret.encode()
    return hashlib.sha256(raw.strip()).hexdigest()


def new_secret() -> str:
    return "sk-qc-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Admission:
    """The outcome of one request's admission: admitted, or refused by ``limit`` for ``retry_after`` seconds."""

    admitted: bool
    limit: str | None  # "requests", "tokens" or "concurrent"
    retry_after: float
    requests_remaining: int | None
    tokens_remaining: int | None
    requests_reset: float
    tokens_reset: float


# KEYS: requests window, tokens window, running. ARGV: rpm, tpm, concurrency (0: unlimited), window ms, running ms.
# Returns {admitted (1/0), refusing limit, retry-after ms, requests in window, tokens in window, requests ttl ms,
# tokens ttl ms}.
ADMIT = """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, running_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local running = tonumber(redis.call('GET', KEYS[3]) or '0')
local function ttl(key) local t = redis.call('PTTL', key) if t < 0 then return window end return t end
if rpm > 0 and requests >= rpm then
  return {0, 'requests', ttl(KEYS[1]), requests, tokens, ttl(KEYS[1]), ttl(KEYS[2])}
end
if tpm > 0 and tokens >= tpm then
  return {0, 'tokens', ttl(KEYS[2]), requests, tokens, ttl(KEYS[1]), ttl(KEYS[2])}
end
if conc > 0 and running >= conc then
  return {0, 'concurrent', 1000, requests, tokens, ttl(KEYS[1]), ttl(KEYS[2])}
end
requests = redis.call('INCR', KEYS[1])
if requests == 1 then redis.call('PEXPIRE', KEYS[1], window) end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], running_ttl)
return {1, '', 0, requests, tokens, ttl(KEYS[1]), ttl(KEYS[2])}
"""

# KEYS: running. Never below zero (a running count that expired meanwhile).
RELEASE = """
local left = redis.call('DECR', KEYS[1])
if left <= 0 then redis.call('DEL', KEYS[1]) end
return left
"""

# KEYS: tokens window. ARGV: tokens (negative: a refund), window ms.
CHARGE = """
local now = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return now
"""


class TenantKeys:
    """Redis names of one tenant's counters."""

    def __init__(self, keys: Keys, name: str) -> None:
        # one tag per tenant: its limit scripts touch its counters together, on one slot of a cluster
        base = f"{keys.prefix}:tenant:{hash_tag(name)}"
        self.requests = f"{base}:requests"
        self.tokens = f"{base}:tokens"
        self.running = f"{base}:running"
        self.usage = f"{base}:usage"


def tenants_key(keys: Keys) -> str:
    return f"{keys.prefix}:tenants"


def names_key(keys: Keys) -> str:
    return f"{keys.prefix}:tenant-names"


def admission(reply: list[Any], limits: TenantLimits) -> Admission:
    admitted, limit, retry_ms, requests, tokens, requests_ttl, tokens_ttl = reply
    name = limit.decode() if isinstance(limit, bytes) else str(limit)
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return Admission(
        admitted=bool(int(admitted)),
        limit=name or None,
        retry_after=int(retry_ms) / 1000,
        requests_remaining=max(rpm - int(requests), 0) if rpm else None,
        tokens_remaining=max(tpm - int(tokens), 0) if tpm else None,
        requests_reset=int(requests_ttl) / 1000,
        tokens_reset=int(tokens_ttl) / 1000,
    )


class TenantStore:
    """Adding, listing, limiting and revoking keys (the ``queuechat keys`` command), on a sync client."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def add(self, name: str, limits: TenantLimits) -> str:
        """A new key for tenant ``name``; its secret is returned once and stored only as a digest."""
        tenant = Tenant(name=name, limits=limits)
        secret = new_secret()
        if not self.client.hsetnx(names_key(self.keys), name, digest(secret)):
            raise ValueError(f"a key named {name!r} exists already")
        self.client.hset(tenants_key(self.keys), digest(secret), tenant.model_dump_json())
        return secret

    def get(self, name: str) -> Tenant | None:
        key_digest = self.client.hget(names_key(self.keys), name)
        if key_digest is None:
            return None
        raw = self.client.hget(tenants_key(self.keys), key_digest)
        return Tenant.model_validate_json(raw) if raw is not None else None

    def _put(self, tenant: Tenant) -> None:
        key_digest = self.client.hget(names_key(self.keys), tenant.name)
        self.client.hset(tenants_key(self.keys), key_digest, tenant.model_dump_json())

    def set_limits(self, name: str, limits: TenantLimits) -> Tenant:
        tenant = self._existing(name)
        tenant.limits = limits
        self._put(tenant)
        return tenant

    def revoke(self, name: str) -> Tenant:
        tenant = self._existing(name)
        tenant.revoked = True
        self._put(tenant)
        return tenant

    def _existing(self, name: str) -> Tenant:
        tenant = self.get(name)
        if tenant is None:
            raise ValueError(f"no key named {name!r}")
        return tenant

    def all(self) -> list[Tenant]:
        raws = self.client.hvals(tenants_key(self.keys))
        return sorted((Tenant.model_validate_json(r) for r in raws), key=lambda t: t.name)

    def usage(self, name: str) -> dict[str, int]:
        return int_map(self.client.hgetall(TenantKeys(self.keys, name).usage))


def usage_by_name(client: Any, keys: Keys) -> dict[str, dict[str, int]]:
    """Every tenant's usage totals, by name, in two round trips (for /metrics)."""
    names = sorted(texts(client.hkeys(names_key(keys))))
    if not names:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(TenantKeys(keys, name).usage)
    return {name: int_map(raw) for name, raw in zip(names, pipe.execute(), strict=True)}


def tenant_of_json(raw: bytes | str | None) -> Tenant | None:
    if raw is None:
        return None
    try:
        return Tenant.model_validate(json.loads(raw))
    except ValueError:
        return None
