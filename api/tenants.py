"""The API's side of tenants (see :mod:`broker.tenants`): finding the tenant of a request's key, admitting the
request under its limits, and charging the tokens its jobs use as their events arrive.

A key's tenant is cached for :data:`CACHE_SECONDS`, so a revoked key or new limits take effect on every replica
within that time; the counters themselves are never cached: admission is one script on Redis, exact across any
number of replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from broker.errors import BrokerUnavailable
from broker.jobevents import JobEvents
from broker.keys import Keys
from broker.schemas import Accepted, AnyEvent, Done
from broker.tenants import (
    ADMIT,
    CHARGE,
    RELEASE,
    RUNNING_TTL_MS,
    WINDOW_MS,
    Admission,
    Tenant,
    TenantKeys,
    admission,
    current_tenant,
    digest,
    names_key,
    tenant_of_json,
    tenants_key,
)

log = logging.getLogger(__name__)

CACHE_SECONDS = 2.0


@dataclass
class _Charged:
    tenant: Tenant
    reserved_per_choice: int
    accepted: bool = False


class TenantGate:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._admit = client.register_script(ADMIT)
        self._release = client.register_script(RELEASE)
        self._charge = client.register_script(CHARGE)
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}
        self._any: tuple[float, bool] = (-CACHE_SECONDS, False)
        self._charged: weakref.WeakKeyDictionary[JobEvents, _Charged] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    # The reads below fail closed: a key that cannot be checked lets no request in (BrokerUnavailable, a 503), and
    # neither does a request without a key once keys were seen, because answering "no keys" or "unknown key" for
    # one failed command would let a request pass without its limits, or without any key at all. An API that has
    # seen no key stays open (its routes answer 503 for the outage themselves; /metrics still says broker_up 0).

    async def any_tenants(self) -> bool:
        """Whether any key is kept in Redis (then every request needs a key)."""
        checked, known = self._any
        if time.monotonic() - checked < CACHE_SECONDS:
            return known
        try:
            known = bool(await self.client.hlen(names_key(self.keys)))
        except (RedisError, OSError) as exc:
            if known:
                raise BrokerUnavailable(f"cannot check the API key: {exc}") from exc
            return False
        self._any = (time.monotonic(), known)
        return known

    async def lookup(self, token: bytes) -> Tenant | None:
        key_digest = digest(token)
        cached = self._tenants.get(key_digest)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            tenant = tenant_of_json(await self.client.hget(tenants_key(self.keys), key_digest))
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot check the API key: {exc}") from exc
        if len(self._tenants) > 10_000:
            self._tenants.clear()
        self._tenants[key_digest] = (time.monotonic(), tenant)
        return tenant

    async def admit(self, tenant: Tenant) -> Admission:
        names = TenantKeys(self.keys, tenant.name)
        limits = tenant.limits
        args = [limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent_requests]
        try:
            reply = await self._admit(
                keys=[names.requests, names.tokens, names.running], args=[*args, WINDOW_MS, RUNNING_TTL_MS]
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot check the API key's limits: {exc}") from exc
        outcome = admission(reply, limits)
        try:
            await self.client.hincrby(names.usage, "requests" if outcome.admitted else "rejected", 1)
        except (RedisError, OSError) as exc:  # the request was admitted: a lost count must not fail it
            log.warning("cannot count a request of tenant %s: %s", tenant.name, exc)
        return outcome

    async def release(self, tenant: Tenant) -> None:
        try:
            await self._release(keys=[TenantKeys(self.keys, tenant.name).running])
        except (RedisError, OSError) as exc:  # the count expires on its own (RUNNING_TTL_MS)
            log.warning("cannot release a request of tenant %s: %s", tenant.name, exc)

    # A job observer (see serving.jobs.JobObserver): charges the tokens of each job a tenant's request submits.

    def job_submitted(self, events: JobEvents, submitted: float) -> None:
        tenant = current_tenant.get()
        if tenant is not None:
            self._charged[events] = _Charged(tenant, reserved_per_choice=events.job.params.max_tokens or 0)

    def job_event(self, events: JobEvents, event: AnyEvent) -> None:
        charged = self._charged.get(events)
        if charged is None:
            return
        if isinstance(event, Accepted) and not charged.accepted:
            charged.accepted = True
            reserved = charged.reserved_per_choice * events.job.params.n
            self._spend(charged.tenant, event.prompt_tokens + reserved, "prompt_tokens", event.prompt_tokens)
        elif isinstance(event, Done):
            used = event.usage.completion_tokens
            self._spend(charged.tenant, used - charged.reserved_per_choice, "completion_tokens", used)

    def _spend(self, tenant: Tenant, tokens: int, field: str, count: int) -> None:
        task = asyncio.get_running_loop().create_task(self._spend_now(tenant, tokens, field, count))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spend_now(self, tenant: Tenant, tokens: int, field: str, count: int) -> None:
        names = TenantKeys(self.keys, tenant.name)
        try:
            if tenant.limits.tokens_per_minute and tokens:
                await self._charge(keys=[names.tokens], args=[tokens, WINDOW_MS])
            await self.client.hincrby(names.usage, field, count)
        except (RedisError, OSError) as exc:
            log.warning("cannot charge %d tokens to tenant %s: %s", tokens, tenant.name, exc)


def rate_limit_headers(outcome: Admission, tenant: Tenant) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers (and ``Retry-After`` when refused)."""
    headers: dict[str, str] = {}
    limits = tenant.limits
    if limits.requests_per_minute:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(outcome.requests_remaining)
        headers["x-ratelimit-reset-requests"] = f"{outcome.requests_reset:.3f}s"
    if limits.tokens_per_minute:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(outcome.tokens_remaining)
        headers["x-ratelimit-reset-tokens"] = f"{outcome.tokens_reset:.3f}s"
    if not outcome.admitted:
        headers["retry-after"] = str(max(1, round(outcome.retry_after + 0.5)))
    return headers
