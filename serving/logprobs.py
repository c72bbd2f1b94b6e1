"""Log-probabilities in OpenAI's two shapes: chat's ``content`` entries and completions' parallel lists."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.schemas import TokenLogprob
from serving import responses


def chat_logprobs(entries: list[TokenLogprob]) -> responses.ChatLogprobs:
    return responses.ChatLogprobs(
        content=[
            responses.ChatCompletionTokenLogprob(
                token=e.token,
                logprob=e.logprob,
                bytes=e.bytes,
                top_logprobs=[
                    responses.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top_logprobs
                ],
            )
            for e in entries
        ]
    )


@dataclass
class CompletionLogprobs:
    """Completions' ``logprobs`` object, built up token by token; ``text_offset`` counts characters from the start
    of the choice's text (the prompt's, when echoed)."""

    offset: int = 0
    spelled: bytes = b""  # the bytes so far: offsets count the whole characters they make
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, entries: list[TokenLogprob]) -> CompletionLogprobs:
        for e in entries:
            self.tokens.append(e.token)
            self.token_logprobs.append(e.logprob)
            if e.logprob is None:  # a prompt's first token: nothing predicts it
                self.top_logprobs.append(None)
            else:
                # as vLLM: the chosen token is always among its position's top_logprobs
                top = {t.token: t.logprob for t in e.top_logprobs}
                top.setdefault(e.token, e.logprob)
                self.top_logprobs.append(top)
            self.text_offset.append(self.offset)
            self.spelled += bytes(e.bytes) if e.bytes is not None else e.token.encode()
            self.offset = len(self.spelled.decode("utf-8", errors="ignore"))
        return self

    def as_openai(self) -> responses.CompletionLogprobs:
        return responses.CompletionLogprobs(
            tokens=self.tokens,
            token_logprobs=self.token_logprobs,
            top_logprobs=self.top_logprobs,
            text_offset=self.text_offset,
        )

    def take(self) -> responses.CompletionLogprobs:
        """The entries added since the last take (a stream chunk's), keeping the running offset."""
        out = self.as_openai()
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out
