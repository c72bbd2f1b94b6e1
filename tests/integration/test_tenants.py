"""Keys as tenants: keys kept in Redis by ``queuechat keys``, and their limits enforced exactly across API
replicas (requests and tokens per minute, requests in flight, allowed models), with OpenAI's 429s and headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from broker.tenants import TenantKeys, TenantLimits, TenantStore
from tests.conftest import ApiServer, RunningWorker, wait_for
from tests.openai_error import openai_error

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def store(settings: Settings) -> TenantStore:
    return TenantStore(sync_client(settings.redis_url or ""), Keys(settings.key_prefix))


@pytest.fixture
def replicas(start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]) -> list[ApiServer]:
    """One worker and two API replicas in front of it."""
    start_worker()
    apis = [start_api(), start_api()]
    for api in apis:
        wait_for(lambda api=api: httpx.get(f"{api.base_url}/v1/models").json().get("data"))  # type: ignore[misc]
    return apis


def chat(api: ApiServer, key: str | None, **body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1, **body}
    return httpx.post(f"{api.base_url}/v1/chat/completions", json=payload, headers=headers, timeout=120)


def keys_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "QUEUECHAT_REDIS_URL": settings.redis_url or "",
        "QUEUECHAT_KEY_PREFIX": settings.key_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "queuechat", "keys", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_requests_per_minute_limit_is_exact_across_replicas(
    settings: Settings, replicas: list[ApiServer], store: TenantStore
) -> None:
    made = keys_command(settings, "add", "team-a", "--rpm", "30")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sk-qc-")
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: chat(replicas[i % 2], secret), range(60)))
    admitted = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(admitted) == 30 and len(refused) == 30, sorted({r.status_code for r in answers})
    # both replicas refused some: the count is one, in Redis, not one per replica
    assert {str(r.url).split("/v1")[0] for r in refused} == {api.base_url for api in replicas}
    for r in refused:
        error = openai_error(r.json())
        assert (error.type, error.code) == ("requests", "rate_limit_exceeded")
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == "30"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert admitted[0].headers["x-ratelimit-limit-requests"] == "30"
    assert store.usage("team-a") == {"requests": 30, "rejected": 30, "prompt_tokens": 30 * _prompt(admitted[0]),
                                     "completion_tokens": 30}  # fmt: skip
    # usage by the key's name, never its secret (a scrape needs a key too once keys exist, as with --api-keys)
    scraper = store.add("prometheus", TenantLimits())  # team-a's minute is spent
    scrape = httpx.get(f"{replicas[0].base_url}/metrics", headers={"Authorization": f"Bearer {scraper}"}).text
    assert 'queuechat:key_requests_total{key_name="team-a"} 30.0' in scrape
    assert 'queuechat:key_rate_limited_requests_total{key_name="team-a"} 30.0' in scrape
    listed = keys_command(settings, "list")
    assert listed.returncode == 0 and "team-a" in listed.stdout and secret not in listed.stdout


def _prompt(response: httpx.Response) -> int:
    return int(response.json()["usage"]["prompt_tokens"])


def test_tokens_are_charged_at_admission_and_refunded_at_done(
    settings: Settings, replicas: list[ApiServer], store: TenantStore
) -> None:
    secret = store.add("team-t", TenantLimits(tokens_per_minute=100_000))
    answers = [chat(replicas[i % 2], secret, max_tokens=8, stop=["never"]) for i in range(3)]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    used = sum(r.json()["usage"]["total_tokens"] for r in answers)
    window = TenantKeys(Keys(settings.key_prefix), "team-t").tokens
    client = sync_client(settings.redis_url or "")
    # each charge of max_tokens was refunded down to the tokens the choice generated, once its done arrived
    wait_for(lambda: int(client.get(window) or 0) == used, timeout=10)
    assert store.usage("team-t")["completion_tokens"] == sum(r.json()["usage"]["completion_tokens"] for r in answers)


def test_a_spent_token_budget_refuses_until_the_window_ends(
    settings: Settings, replicas: list[ApiServer], store: TenantStore
) -> None:
    secret = store.add("team-small", TenantLimits(tokens_per_minute=5))
    assert chat(replicas[0], secret, max_tokens=4).status_code == 200
    refused = wait_for(lambda: (r := chat(replicas[1], secret)).status_code == 429 and r, timeout=10)
    error = openai_error(refused.json())
    assert (error.type, error.code) == ("tokens", "rate_limit_exceeded")
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


def test_requests_in_flight_are_limited(replicas: list[ApiServer], store: TenantStore) -> None:
    secret = store.add("team-c", TenantLimits(concurrent_requests=1))
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    body = json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": 1}).encode()
    half_sent, go_on = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        """The client holds its request in flight: half the body, then the rest when the test says so."""
        yield body[:10]
        half_sent.set()
        go_on.wait(60)
        yield body[10:]

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            httpx.post, f"{replicas[0].base_url}/v1/chat/completions", content=slow_body(), headers=headers, timeout=60
        )
        assert half_sent.wait(30)
        running = TenantKeys(store.keys, "team-c").running
        wait_for(lambda: store.client.get(running) == b"1", timeout=10)  # admitted, its body still coming
        second = chat(replicas[1], secret)
        assert second.status_code == 429, second.text
        assert openai_error(second.json()).code == "rate_limit_exceeded"
        assert "retry-after" in second.headers
        go_on.set()
        assert first.result().status_code == 200, first.result().text
    assert chat(replicas[1], secret).status_code == 200  # the first one's slot was given back when it ended


def test_keys_are_required_refused_when_revoked_and_limited_to_their_models(
    replicas: list[ApiServer], store: TenantStore, settings: Settings
) -> None:
    api = replicas[0]
    assert chat(api, None).status_code == 200  # no key anywhere yet: an open API
    secret = store.add("team-m", TenantLimits(models=["another-model"]))
    no_key = wait_for(lambda: (r := chat(api, None)).status_code == 401 and r, timeout=10)
    assert openai_error(no_key.json()).code is None
    assert openai_error(chat(api, "sk-qc-wrong").json()).code == "invalid_api_key"
    hidden = chat(api, secret)
    assert hidden.status_code == 404 and openai_error(hidden.json()).code == "model_not_found"
    store.set_limits("team-m", TenantLimits())
    assert wait_for(lambda: chat(api, secret).status_code == 200, timeout=10)
    revoked = keys_command(settings, "revoke", "team-m")
    assert revoked.returncode == 0, revoked.stderr
    gone = wait_for(lambda: (r := chat(api, secret)).status_code == 401 and r, timeout=10)
    assert openai_error(gone.json()).code == "invalid_api_key"


def test_bad_key_commands_fail_with_one_line(settings: Settings) -> None:
    assert keys_command(settings, "add", "ok-name").returncode == 0
    again = keys_command(settings, "add", "ok-name")
    assert again.returncode == 1 and "exists already" in again.stderr and "Traceback" not in again.stderr
    bad = keys_command(settings, "add", "no spaces allowed")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    unknown = keys_command(settings, "revoke", "nobody")
    assert unknown.returncode == 1 and "no key named" in unknown.stderr


def test_a_keys_weight_is_set_with_its_limits(settings: Settings, store: TenantStore) -> None:
    """``--weight`` on ``keys add`` and ``keys limits`` (the key's share in fair queuing); listed; 0 is refused."""
    assert keys_command(settings, "add", "team-w", "--weight", "3").returncode == 0
    tenant = store.get("team-w")
    assert tenant is not None and tenant.limits.weight == 3
    assert keys_command(settings, "limits", "team-w", "--rpm", "5", "--weight", "2").returncode == 0
    tenant = store.get("team-w")
    assert tenant is not None and (tenant.limits.weight, tenant.limits.requests_per_minute) == (2, 5)
    refused = keys_command(settings, "limits", "team-w", "--weight", "0")
    assert refused.returncode != 0 and "weight" in refused.stderr
    listed = keys_command(settings, "list")
    assert listed.returncode == 0 and "weight" in listed.stdout
