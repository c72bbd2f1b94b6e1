"""Requests into vLLM's terms: the ``SamplingParams`` of a :class:`~workers.engine.GenerationRequest` (and of a
prompt to score), and a grammar as the Lark text vLLM's structured outputs take. What vLLM cannot honour is refused
with an :class:`~broker.errors.InvalidRequest` naming the parameter (a 400). vLLM is imported where it is used, so
this module imports without it. Driving the engine is :mod:`workers.engines.vllm`."""

from __future__ import annotations

from typing import Any

from broker.errors import InvalidRequest
from workers.engine import GenerationRequest


def check_top(top: int, max_logprobs: int) -> None:
    """InvalidRequest for more alternatives per token than the engine reports."""
    if top > max_logprobs:
        raise InvalidRequest(f"this worker reports at most {max_logprobs} alternatives per token", param="top_logprobs")


def sampling_params(request: GenerationRequest, max_logprobs: int) -> Any:
    """vLLM's SamplingParams for a request; InvalidRequest (a 400) for what vLLM cannot do."""
    if request.logprobs is not None:
        check_top(request.logprobs, max_logprobs)
    repetition, presence, frequency = request.penalties or (1.0, 0.0, 0.0)
    try:
        return _sampling_params(request, repetition, presence, frequency)
    except InvalidRequest:
        raise
    except ValueError as exc:  # vLLM's own checks (VLLMValidationError names the parameter)
        raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from None


def _sampling_params(request: GenerationRequest, repetition: float, presence: float, frequency: float) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    return SamplingParams(
        max_tokens=request.max_new_tokens,
        temperature=float(request.temperature),
        top_p=float(request.top_p),
        top_k=int(request.top_k or 0),
        seed=request.seed,
        stop_token_ids=list(request.stop_token_ids) or None,
        logprobs=request.logprobs,
        repetition_penalty=float(repetition),
        presence_penalty=float(presence),
        frequency_penalty=float(frequency),
        structured_outputs=StructuredOutputsParams(grammar=lark_of(request.grammar)) if request.grammar else None,
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
        logit_bias=dict(request.logit_bias) if request.logit_bias else None,
        allowed_token_ids=list(request.allowed_token_ids) if request.allowed_token_ids else None,
        detokenize=False,
        output_kind=RequestOutputKind.DELTA,
    )


def scoring_params(top: int) -> Any:
    """A one-token request for a prompt's logprobs with the ``top`` likeliest alternatives per token."""
    from vllm import SamplingParams

    return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top, detokenize=False)


def lark_of(grammar: str) -> str:
    """An llguidance grammar (the JSON form workers/grammar.py makes) as the Lark text vLLM's ``grammar`` takes:
    vLLM reads a grammar string as Lark or GBNF only, and llguidance's Lark embeds a JSON schema as ``%json``."""
    import json

    try:
        spec = json.loads(grammar)
    except json.JSONDecodeError:
        return grammar  # Lark or GBNF already
    parts = spec.get("grammars") if isinstance(spec, dict) else None
    if not isinstance(parts, list) or len(parts) != 1:
        raise InvalidRequest("this grammar cannot be used with the vLLM engine", param="response_format")
    part = parts[0]
    if part.get("json_schema") is not None:
        return "start: %json " + json.dumps(part["json_schema"])
    if part.get("lark_grammar"):
        return str(part["lark_grammar"])
    raise InvalidRequest("this grammar cannot be used with the vLLM engine", param="response_format")
