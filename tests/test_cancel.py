"""A client that gives up on a request (a client timeout, a closed connection) has its job cancelled: stopped
while it runs, skipped while it is queued, streamed or not."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from broker.connection import sync_client
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import Stack, wait_for

# The tiny model never ends a sequence by itself: at a few hundred tokens a second this runs for many seconds.
LONG = 4000


def _stats(settings: Settings) -> dict[str, int]:
    assert settings.redis_url
    raw = sync_client(settings.redis_url).hgetall(Keys(settings.key_prefix).stats("tiny"))
    return {k.decode(): int(v) for k, v in raw.items()}


def _client(base_url: str, timeout: float) -> openai.OpenAI:
    # no retries: openai-python's default two would send the same job again after each timeout
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=timeout, max_retries=0)


def _time_out(endpoint: str, base_url: str, *, stream: bool = False, timeout: float = 1.0) -> None:
    """A request whose client gives up after ``timeout`` seconds."""
    client = _client(base_url, timeout)
    with pytest.raises(openai.APITimeoutError):
        if endpoint == "chat":
            answer: Any = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=LONG, stream=stream
            )
        else:
            answer = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=LONG, stream=stream)
        for _ in answer if stream else ():
            pass


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_non_streaming_client_that_times_out_stops_its_job(stack: Stack, settings: Settings, endpoint: str) -> None:
    worker = stack.worker.worker
    _time_out(endpoint, stack.base_url)
    wait_for(lambda: worker.totals["cancelled"] == 1 and not worker.jobs, timeout=30)
    stats = _stats(settings)
    assert stats.get("completed", 0) == 0
    assert stats["output_tokens"] < LONG
