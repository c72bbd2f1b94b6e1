"""An async load generator for any OpenAI-compatible server: N concurrent streaming /v1/completions requests,
measuring time to first token, inter-token latency, output tokens/s and errors."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RequestResult:
    ttft: float | None = None
    latency: float = 0.0
    tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunResult:
    wall: float
    requests: list[RequestResult]

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.requests if r.error is None]

    @property
    def errors(self) -> int:
        return len(self.requests) - len(self.ok)

    @property
    def output_tokens(self) -> int:
        return sum(r.tokens for r in self.ok)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall if self.wall else 0.0

    def ttft(self, q: float) -> float:
        values = sorted(r.ttft for r in self.ok if r.ttft is not None)
        return quantile(values, q)

    def itl(self, q: float) -> float:
        gaps = sorted(b - a for r in self.ok for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False))
        return quantile(gaps, q)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


async def stream_into(
    result: RequestResult,
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    text_of: Callable[[dict[str, Any]], str | None],
) -> RequestResult:
    """POST a streaming request and record into ``result`` its TTFT, chunk times, text (``text_of`` a chunk) and
    the usage's completion tokens, or the error that ended it."""
    start = time.perf_counter()
    try:
        async with http.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"])
                    break
                now = time.perf_counter()
                text = text_of(chunk)
                if text:
                    if result.ttft is None:
                        result.ttft = now - start
                    result.chunk_times.append(now)
                    result.text.append(text)
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
    except (httpx.HTTPError, ValueError) as exc:
        result.error = repr(exc)
    result.latency = time.perf_counter() - start
    return result


def completion_text(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices")
    return choices[0].get("text") if choices else None


async def one_stream(http: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> RequestResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return await stream_into(RequestResult(), http, "/v1/completions", body, completion_text)


async def run_load(
    base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int, timeout: float = 600
) -> RunResult:
    """Send ``prompts`` keeping ``concurrency`` requests in flight; returns per-request results and wall time."""
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        gate = asyncio.Semaphore(concurrency)

        async def gated(prompt: str) -> RequestResult:
            async with gate:
                return await one_stream(http, model, prompt, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(p) for p in prompts))
        return RunResult(wall=time.perf_counter() - start, requests=list(results))
