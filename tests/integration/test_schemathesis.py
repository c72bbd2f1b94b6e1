"""Property-based fuzzing of the whole API from its own /openapi.json (schemathesis): valid and invalid requests
for every operation, a bounded number of each, derandomized so a run is repeatable. No request may get a 5xx,
every 4xx must be OpenAI-shaped (Anthropic-shaped on Anthropic's Messages paths), and every JSON body must follow
the schema the API documents for its status."""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.anthropic.errors import ERROR_TYPES, is_anthropic_path
from tests.conftest import Stack
from tests.openai_error import openai_error

# Per operation and generation mode (valid, invalid): about 150 requests over the whole API, within a minute on two
# cores (most answers are a quick 400 or 404; few cases name a live model).
MAX_EXAMPLES = 15


def aim_at_live_model(case: Any) -> None:
    """Point every other generated body at the live model, so fuzzed parameters reach a worker and its engine too
    (a random model name is only ever a 404). Generation is capped at a few tokens to keep the run short."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = "tiny"
    limits = ("max_tokens", "max_completion_tokens", "max_output_tokens")
    for key in limits:
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):  # 4000.0 is a valid integer too
            body[key] = max(min(value, 4), -1)
    if "model" in body and all(body.get(key) is None for key in limits):
        # left out or null: the model's whole context, times n (the Responses API names its limit its own way)
        body["max_output_tokens" if case.path.startswith("/v1/responses") else "max_tokens"] = 4
    for item in body.get("prompts") or []:
        if isinstance(item, dict) and isinstance(item.get("model"), str):
            item["model"] = "tiny"


def is_json(response: Any) -> bool:
    value = response.headers.get("content-type") or ""
    value = value[0] if isinstance(value, list) else value  # schemathesis keeps every value of a header
    return str(value).startswith("application/json")


def problem(case: Any, response: Any) -> str | None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path} {str(case.body)[:200]!r} -> {status}"
    if status >= 500:
        return f"{where}: {response.text[:300]}"
    if not response.headers.get("x-request-id"):
        return f"{where}: no X-Request-Id"
    if status >= 400 and is_anthropic_path(case.formatted_path):
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if body.get("type") != "error" or not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return f"{where}: not Anthropic-shaped: {body}"
        if error.get("type") not in set(ERROR_TYPES.values()) | {"api_error"}:
            return f"{where}: unknown Anthropic error type {error.get('type')!r}"
    elif status >= 400:
        try:
            openai_error(response.json())
        except (ValueError, ValidationError, AssertionError) as exc:
            return f"{where}: not OpenAI-shaped: {exc}"
    if is_json(response):
        try:
            case.validate_response(response, checks=[response_schema_conformance])
        except Exception as exc:  # schemathesis raises its failures (one, or a group of them)
            return f"{where}: the body does not follow the documented schema: {str(exc)[:500]}"
    return None


def test_fuzzed_requests_get_no_5xx_and_openai_shaped_4xx(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    problems: list[str] = []
    counts = {"cases": 0, "operations": 0, "answers": 0}
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        counts["operations"] += 1
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: problems are collected, not raised
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                counts["cases"] += 1
                if counts["cases"] % 2:
                    aim_at_live_model(case)
                try:
                    response = case.call(base_url=stack.base_url, timeout=30)
                except Exception as exc:
                    problems.append(f"{case.method} {case.formatted_path} {case.body!r}: {type(exc).__name__} {exc}")
                    return
                statuses[response.status_code] += 1
                if is_json(response) and response.status_code < 400:
                    counts["answers"] += 1
                found = problem(case, response)
                if found:
                    problems.append(found)

            try:
                run()
            except Unsatisfiable:
                # an operation without parameters (GET /health) has no invalid form to generate
                assert mode == GenerationMode.NEGATIVE
    summary = f"{counts['cases']} cases over {counts['operations']} operations, {len(problems)} problems"
    print(f"schemathesis: {summary}; statuses {dict(sorted(statuses.items()))}")
    assert counts["operations"] >= 8
    assert counts["cases"] >= 50
    assert counts["answers"] >= 10  # successful JSON answers whose bodies were checked against the schema
    assert not problems, "\n".join(problems[:20])
