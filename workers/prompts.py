"""Turn a job's messages or prompt into token ids with the model's own tokenizer and chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from broker.errors import ContextLengthExceeded, InvalidRequest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML}


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for, read off its vocabulary (a byte-level token is
    spelt one character per byte, so this is at least the text any token decodes to). A text longer than
    ``context * longest_token_chars`` cannot fit in the context, whatever it is: known without tokenising it."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a readable vocabulary: no bound from it
        return 0
    return max((len(token) for token in vocab), default=0)


def check_prompt_chars(chars: int, max_chars: int | None, limit: int, param: str) -> None:
    """ContextLengthExceeded for a prompt of ``chars`` characters over ``max_chars``, so a huge
    text is refused before it is tokenised (tokenising 50 MB took a worker past 12 GB)."""
    if max_chars and chars > max_chars:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens; a prompt of {chars} characters cannot fit "
            f"in it (at most {max_chars} characters could). Please reduce the length of the messages or prompt.",
            param=param,
        )


def load_chat_template(conv_template: str | None) -> str | None:
    """``--conv-template``: a built-in name (chatml) or a path to a Jinja file; None keeps the tokenizer's."""
    if conv_template is None:
        return None
    if conv_template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[conv_template]
    path = Path(conv_template)
    if path.is_file():
        return path.read_text()
    raise ValueError(f"--conv-template {conv_template!r}: not a built-in ({', '.join(BUILTIN_TEMPLATES)}) or a file")


def developer_as_system(messages: list[dict[str, Any]], template: Any) -> list[dict[str, Any]]:
    """OpenAI's ``developer`` role is newer than most chat templates: a template that never names it gets such
    messages as ``system`` ones, which is what the role replaced."""
    if isinstance(template, str) and "developer" in template:
        return messages
    return [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]


TOOLS_SYSTEM_PROMPT = (
    "You can call functions. Their signatures, as JSON schemas, are inside <tools></tools>:\n<tools>\n{tools}\n"
    "</tools>\nTo call one, answer with a JSON object of its name and arguments inside <tool_call></tool_call>, "
    'for example:\n<tool_call>\n{{"name": "<function name>", "arguments": {{...}}}}\n</tool_call>'
)


def with_tools_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates that ignore ``tools``: describe them in the system message, in the widespread Hermes format,
    which is also the one :mod:`workers.toolcalls` parses back."""
    text = TOOLS_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t.get("function", t)) for t in tools))
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's tool calls appended to its content in the Hermes format the tools prompt asks for,
    for templates that only render content."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    blocks = [
        "<tool_call>\n"
        + json.dumps({"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})})
        + "\n</tool_call>"
        for c in calls
    ]
    text = "\n".join([message.get("content") or "", *blocks]).strip()
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": text}


def chat_prompt_ids(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    chat_template: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise InvalidRequest(
            "this model has no chat template; use /v1/completions or start the worker with --conv-template"
        )
    messages = developer_as_system(messages, template)
    extra: dict[str, Any] = dict(template_kwargs or {})  # variables first: the call's own arguments win
    if continue_final_message:
        extra["continue_final_message"] = True
    if "tool_calls" not in str(template):  # earlier calls would vanish from the prompt: write them out as text
        messages = [calls_as_text(m) for m in messages]
    if tools:
        if "tools" in str(template):  # the template renders tools itself
            extra["tools"] = tools
        else:
            messages = with_tools_prompt(messages, tools)
    try:
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, chat_template=chat_template, **extra
        )
    except Exception as exc:  # jinja raises whatever the template author chose
        raise InvalidRequest(f"the chat template rejected these messages: {exc}") from exc
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(i) for i in ids]


def completion_prompt_ids(
    tokenizer: Any, prompt: str | list[int], vocab_size: int, *, add_special_tokens: bool = True
) -> list[int]:
    if isinstance(prompt, str):
        return [int(i) for i in tokenizer.encode(prompt, add_special_tokens=add_special_tokens)]
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is outside this model's vocabulary (0..{vocab_size - 1})")
    return list(prompt)
