"""Reasoning written between an opening and a closing tag before the answer: ``<think>…</think>`` (DeepSeek-R1,
Qwen3, QwQ and the models trained like them).

The reasoning opens either in the output (the model writes ``<think>`` first) or already in the prompt: templates
such as DeepSeek-R1's, or Qwen3's thinking ones, end the generation prompt with ``<think>``, so the output starts
inside it. The worker, which rendered the prompt, tells which (``accepted.reasoning_open``). Everything up to the
closing tag is then reasoning, the rest the answer; output cut short before the closing tag is all reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# parser name -> (opening tag, closing tag)
REASONING_TAGS = {"deepseek_r1": ("<think>", "</think>"), "qwen3": ("<think>", "</think>")}


def prompt_opens_reasoning(parser: str, prompt_tail: str) -> bool:
    """Whether a prompt ending with ``prompt_tail`` leaves a reasoning block open (its opening tag after the last
    closing one), so that the output begins inside it."""
    opening, closing = REASONING_TAGS[parser]
    at = prompt_tail.rfind(opening)
    return at >= 0 and prompt_tail.find(closing, at) < 0


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (it may still become the tag)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class _State(Enum):
    START = "start"  # nothing shown yet: the output may still open reasoning
    REASONING = "reasoning"
    ANSWER = "answer"


@dataclass
class Split:
    """A piece of output: reasoning or answer text."""

    reasoning: bool
    text: str


class ReasoningSplitter:
    """One choice's output read as it comes, into reasoning and answer. Text that may still be a tag is held back;
    whitespace between the closing tag and the answer is left out."""

    def __init__(self, parser: str, *, opened: bool = False) -> None:
        self.opening, self.closing = REASONING_TAGS[parser]
        self.state = _State.REASONING if opened else _State.START
        self.pending = ""
        self.answer_begun = False

    def _answer(self, text: str) -> list[Split]:
        if not self.answer_begun:
            text = text.lstrip()
            self.answer_begun = bool(text)
        return [Split(False, text)] if text else []

    def feed(self, text: str) -> list[Split]:
        """The pieces ``text`` makes ready to send."""
        self.pending += text
        out: list[Split] = []
        if self.state is _State.START:
            head = self.pending.lstrip()
            if head.startswith(self.opening):
                self.state, self.pending = _State.REASONING, head[len(self.opening) :]
            elif self.opening.startswith(head):
                return out  # still nothing, or the beginning of the opening tag
            else:
                self.state, self.answer_begun = _State.ANSWER, True
        if self.state is _State.REASONING:
            end = self.pending.find(self.closing)
            if end < 0:
                keep = partial_suffix(self.pending, self.closing)
                reasoning, self.pending = (
                    self.pending[: len(self.pending) - keep],
                    self.pending[len(self.pending) - keep :],
                )
                return [Split(True, reasoning)] if reasoning else []
            if end:
                out.append(Split(True, self.pending[:end]))
            self.state, self.pending = _State.ANSWER, self.pending[end + len(self.closing) :]
        text, self.pending = self.pending, ""
        return out + self._answer(text)

    def finish(self) -> list[Split]:
        """What is still held back, once the output is complete: an unclosed block's end is reasoning."""
        text, self.pending = self.pending, ""
        if self.state is _State.REASONING:
            return [Split(True, text)] if text else []
        return self._answer(text) if self.state is _State.ANSWER else ([Split(False, text)] if text.strip() else [])

    def whole(self, text: str) -> tuple[str | None, str]:
        """(the reasoning, or None when there is none; the answer) of a whole output."""
        pieces = self.feed(text) + self.finish()
        reasoning = "".join(p.text for p in pieces if p.reasoning)
        return reasoning or None, "".join(p.text for p in pieces if not p.reasoning)


def split_reasoning(parser: str, text: str, *, opened: bool = False) -> tuple[str | None, str]:
    """(the reasoning, or None when there is none; the answer) of a whole output."""
    return ReasoningSplitter(parser, opened=opened).whole(text)
