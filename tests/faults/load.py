"""Client load for the fault suite: concurrent chat requests through the official openai client, each ending in
exactly one recorded outcome, so a test can count requests that got neither an answer nor an explicit error."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import openai

PROMPT = [{"role": "user", "content": "Tell me a long story about queues."}]


@dataclass
class Outcome:
    stream: bool
    finish_reason: str | None = None
    text: str = ""
    tokens: int = 0  # with logprobs: tokens received
    error: str | None = None  # the error code of an explicit error
    response_id: str | None = None

    @property
    def answered(self) -> bool:
        return self.finish_reason is not None and self.error is None

    @property
    def silent(self) -> bool:
        """Neither a full answer nor an explicit error: the failure the fault suite exists to rule out."""
        return not self.answered and self.error is None


@dataclass
class Load:
    base_url: str
    model: str = "tiny"
    max_tokens: int = 256
    outcomes: list[Outcome] = field(default_factory=list)
    first_tokens: int = 0  # streams that have received text

    def client(self) -> openai.AsyncOpenAI:
        # No retries: a retried request would hide the error the server sent.
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(self, client: openai.AsyncOpenAI, stream: bool) -> Outcome:
        outcome = Outcome(stream=stream)
        self.outcomes.append(outcome)
        try:
            if stream:
                chunks = await client.chat.completions.create(
                    model=self.model,
                    messages=PROMPT,
                    max_tokens=self.max_tokens,
                    stream=True,
                )
                async for chunk in chunks:
                    outcome.response_id = chunk.id
                    for choice in chunk.choices:
                        if choice.delta.content:
                            if not outcome.text:
                                self.first_tokens += 1
                            outcome.text += choice.delta.content
                        if choice.finish_reason:
                            outcome.finish_reason = choice.finish_reason
            else:
                reply = await client.chat.completions.create(
                    model=self.model,
                    messages=PROMPT,
                    max_tokens=self.max_tokens,
                )
                outcome.response_id = reply.id
                outcome.text = reply.choices[0].message.content or ""
                outcome.finish_reason = reply.choices[0].finish_reason
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            outcome.error = str(body.get("code") or exc.status_code)
        except openai.APIError as exc:  # an error chunk in a stream
            body = exc.body if isinstance(exc.body, dict) else {}
            outcome.error = str(body.get("code") or exc.message)
        return outcome

    async def run(self, streaming: int, plain: int) -> list[Outcome]:
        client = self.client()
        try:
            jobs = [self.one(client, True) for _ in range(streaming)] + [self.one(client, False) for _ in range(plain)]
            return list(await asyncio.gather(*jobs))
        finally:
            await client.close()
