"""Chat messages as the OpenAI SDK sends them: content parts, every role, tool calls; media parts refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Stack


def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0, timeout=60)


def answer(stack: Stack, messages: list[dict[str, Any]]) -> str:
    r = client(stack).chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    return r.choices[0].message.content or ""


def test_text_parts_are_joined_like_a_string(stack: Stack) -> None:
    as_string = answer(stack, [{"role": "user", "content": "What is the capital of France?"}])
    as_parts = answer(
        stack,
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}],
            }
        ],
    )
    assert as_parts == as_string


def test_developer_is_system_for_the_template(stack: Stack) -> None:
    system = answer(stack, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    developer = answer(stack, [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert developer == system


def test_a_tool_conversation_is_accepted(stack: Stack) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You can call tools."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    r = client(stack).chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("part", "what"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}, "images"),
        ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, "audio"),
    ],
)
def test_media_parts_are_refused_naming_the_part(stack: Stack, part: dict[str, Any], what: str) -> None:
    messages = [
        {"role": "system", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client(stack).chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[1].content[1]"
    assert f"does not accept {what}" in error["message"]


@pytest.mark.parametrize(
    ("message", "param", "words"),
    [
        ({"role": "tool", "content": "18 C"}, "messages[0]", "tool_call_id"),
        ({"role": "assistant"}, "messages[0]", "needs 'content'"),
        ({"role": "user"}, "messages[0]", "needs 'content'"),
        ({"role": "user", "content": "x", "tool_call_id": "c"}, "messages[0]", "only allowed in tool messages"),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]", "needs a 'text' field"),
        ({"role": "user", "content": [{"type": "video", "video": "x"}]}, "messages[0].content[0].type", "Input"),
        ({"role": "system", "content": [{"type": "refusal", "refusal": "no"}]}, "messages[0]", "not allowed"),
        ({"role": "assistant", "content": "x", "function_call": {"name": "f"}}, "messages[0].function_call", "None"),
    ],
)
def test_bad_messages_name_the_message(stack: Stack, message: dict[str, Any], param: str, words: str) -> None:
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "tiny", "messages": [message]}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


def test_a_response_message_can_be_sent_back(stack: Stack) -> None:
    """What the SDK serialises when a client appends the previous answer's message object to the conversation."""
    c = client(stack)
    first: list[Any] = [{"role": "user", "content": "Hi"}]
    r = c.chat.completions.create(model="tiny", messages=first, max_tokens=3)
    follow_up = [*first, r.choices[0].message, {"role": "user", "content": "And then?"}]
    again = c.chat.completions.create(model="tiny", messages=follow_up, max_tokens=3)
    assert again.choices[0].finish_reason == "length"
    assert again.usage is not None and r.usage is not None
    assert again.usage.prompt_tokens > r.usage.prompt_tokens


def test_developer_reaches_a_template_that_knows_it(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from workers.prompts import CHATML, chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    knows = "{# a template with its own developer role #}" + CHATML
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    as_developer = tokenizer.decode(chat_prompt_ids(tokenizer, messages, knows))
    as_system = tokenizer.decode(chat_prompt_ids(tokenizer, messages, CHATML))
    assert "developer\nBe brief." in as_developer
    assert "system\nBe brief." in as_system and "developer" not in as_system
