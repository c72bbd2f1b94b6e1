"""/health says 200 only when the broker takes jobs: not for a Sentinel's port, not for a read-only replica."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from broker.settings import Settings
from tests.conftest import ApiServer, free_port, wait_for
from tests.sentinel_support import redis_server_binary

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="needs Debian's redis-server")


@pytest.fixture(params=["sentinel", "replica"])
def not_a_primary(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A Redis that answers PING but takes no job: a Sentinel, or a replica (of a primary that is not there)."""
    binary = redis_server_binary()
    assert binary
    port = free_port()
    if request.param == "sentinel":
        conf = tmp_path / "sentinel.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n")
        args = [binary, str(conf), "--sentinel"]
    else:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
        args += ["--replicaof", "127.0.0.1", str(free_port())]
    log = (tmp_path / "redis.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        import redis

        wait_for(lambda: redis.Redis(port=port).ping())
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_health_is_503_when_the_broker_is_no_primary(not_a_primary: str, start_api: Callable[..., ApiServer]) -> None:
    api = start_api(Settings(redis_url=not_a_primary, key_prefix="qchealth"))
    response = httpx.get(f"{api.base_url}/health", timeout=10)
    assert response.status_code == 503
    assert response.json()["broker"] == "down"


def test_health_is_200_on_a_primary(settings: Settings, start_api: Callable[..., ApiServer]) -> None:
    response = httpx.get(f"{start_api().base_url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["broker"] == "up"
