"""What the benchmarks share: a Redis to run against, and waiting for a server to serve its models."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx


def redis_or_embedded(url: str | None) -> tuple[str, Any]:
    """``url``, or a private embedded Valkey started for the run: (its URL, the server to stop, or None)."""
    if url is not None:
        return url, None
    from broker.embedded import EmbeddedValkey

    server = EmbeddedValkey()
    server.start()
    return server.url, server


def wait_serving(
    base: str, names: set[str], procs: list[subprocess.Popen[bytes]], timeout: float, hint: str = ""
) -> None:
    """Return once ``base``'s /v1/models lists every name; exit if a process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            served = {m["id"] for m in httpx.get(f"{base}/v1/models", timeout=5).json()["data"]}
            if names <= served:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    raise SystemExit(f"{base} did not serve {sorted(names)}{hint}")
