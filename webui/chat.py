"""Conversations and their streamed replies, free of any widget so they can be tested on their own.

A :class:`ChatSession` holds one conversation; :func:`reply` asks a model for the answer to its last turn through
the broker's producer and yields as the text grows. A reasoning model's thinking (its worker runs with
``--reasoning-parser``) is read apart from the answer, as the API reads it, and shown as a thought of its own.
Closing the iterator (the Stop button, a browser that left) closes the job's events, which unsubscribes from its
channel: the worker's next PUBLISH reaches nobody and it cancels the sequence.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import ValidationError

from broker.errors import QueuechatError
from broker.jobevents import JobEvents
from broker.producer import Producer
from broker.schemas import Accepted, AnyEvent, Delta, Done
from serving.chat import reasoning_splitter
from serving.parsers import ReasoningSplitter
from serving.requests import ChatCompletionRequest
from webui import messages

# Re-rendering a growing Markdown answer for every token would cost the browser O(n²); ten frames a second read
# as live and leave a slow machine's browser time for clicks (Stop must not wait for the answer to end).
FRAME_SECONDS = 0.1
# How often a reply waiting for an event (its job still queued, say) looks whether it was stopped.
STOP_POLL_SECONDS = 0.2


class InputRejected(Exception):
    """A message the UI does not send; the text says why and what to do."""


@dataclass
class Params:
    temperature: float = 0.0  # as WebUISettings' defaults
    top_p: float = 1.0
    max_tokens: int = 256


@dataclass
class Turn:
    user: str
    model: str
    params: Params
    answer: str = ""
    reasoning: str = ""  # a reasoning model's thinking: shown apart, never sent back to the model
    error: str | None = None
    stopped: bool = False
    finish_reason: str | None = None
    job_id: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def answered(self) -> bool:
        """Whether the model said something the next turn should see."""
        return bool(self.answer)

    def take(self, splitter: ReasoningSplitter | None, text: str, *, final: bool = False) -> None:
        """Add generated text to the answer, or, read by the worker's reasoning parser, to the reasoning or the
        answer (``final``: the end of the output, where text held back as a possible tag is let out)."""
        if splitter is None:
            self.answer += text
            return
        for piece in splitter.feed(text) + (splitter.finish() if final else []):
            if piece.reasoning:
                self.reasoning += piece.text
            else:
                self.answer += piece.text


class Shown(NamedTuple):
    """One message of a chat window: its role, its Markdown, and for a reasoning model's thinking the state of
    that thought ("pending" while it grows, "done" once the answer begins or the reply ended); None otherwise."""

    role: str
    text: str
    thinking: Literal["pending", "done"] | None = None


@dataclass
class ChatSession:
    """One conversation of one person with one model (per turn: the model may change between turns)."""

    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    streaming: bool = False

    def check(self, text: str, *, max_chars: int, max_turns: int) -> None:
        if len(text) > max_chars:
            raise InputRejected(messages.too_long(len(text), max_chars))
        if len(self.turns) >= max_turns:
            raise InputRejected(messages.too_many_turns(max_turns))

    def ask(self, text: str, model: str, params: Params) -> Turn:
        turn = Turn(user=text, model=model, params=params)
        self.turns.append(turn)
        return turn

    def retry(self, model: str, params: Params) -> Turn | None:
        """Forget the last answer so it can be asked again; None when there is nothing to regenerate."""
        if not self.turns:
            return None
        last = self.turns.pop()
        return self.ask(last.user, model, params)

    def messages(self) -> list[dict[str, str]]:
        """The chat messages for the last turn's job: system prompt, earlier answered turns, the question."""
        out: list[dict[str, str]] = []
        if self.system_prompt.strip():
            out.append({"role": "system", "content": self.system_prompt})
        *earlier, last = self.turns
        for turn in earlier:
            if turn.answered:  # a turn that failed before any text would leave the model a question unanswered
                out += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.answer}]
        out.append({"role": "user", "content": last.user})
        return out

    def display(self) -> list[Shown]:
        """The messages of a chat window: each question, the model's thinking if it reasons, and its answer; an
        answer still empty while streaming is left out."""
        shown: list[Shown] = []
        for turn in self.turns:
            shown.append(Shown("user", turn.user))
            if turn.reasoning:
                thinking = turn.finished is None and not turn.answer and not turn.stopped
                shown.append(Shown("assistant", turn.reasoning, "pending" if thinking else "done"))
            notes = []
            if turn.stopped:
                notes.append("*(stopped)*")
            if turn.error:
                notes.append(f"⚠️ {turn.error}")
            if turn.reasoning and not turn.answer and turn.finish_reason == "length":
                notes.append("*(the answer was cut short while the model was thinking: allow more output tokens)*")
            text = "\n\n".join([turn.answer, *notes] if turn.answer else notes)
            if text:
                shown.append(Shown("assistant", text))
        return shown

    def stop(self) -> None:
        """Mark the answer being streamed as stopped; :func:`reply` closes its job at the next event, or within
        :data:`STOP_POLL_SECONDS` while there is none."""
        if self.streaming and self.turns:
            self.turns[-1].stopped = True

    def clear(self) -> None:
        """Start a new conversation in place. A reply still running stops at its next event and then draws this
        empty session, so whatever it drew before cannot be the last thing on the screen."""
        self.stop()
        self.turns = []
        self.id = uuid.uuid4().hex

    async def settled(self, timeout: float = 2.0) -> bool:
        """Wait for a stopped reply to wind down; whether it has."""
        deadline = time.monotonic() + timeout
        while self.streaming and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.streaming

    @property
    def last_answered(self) -> Turn | None:
        """The last turn once its answer is over (finished, failed or stopped): what a vote is about."""
        return self.turns[-1] if self.turns and (self.turns[-1].finished or self.turns[-1].stopped) else None

    def record(self) -> dict[str, Any]:
        """The conversation as it goes into the vote log."""
        return {
            "conversation_id": self.id,
            "system_prompt": self.system_prompt,
            "turns": [asdict(t) for t in self.turns],
        }


def request_of(session: ChatSession, turn: Turn) -> ChatCompletionRequest:
    """The same request an OpenAI client would send, so the web UI and the API build jobs one way."""
    return ChatCompletionRequest(
        model=turn.model,
        messages=session.messages(),  # type: ignore[arg-type]  # validated into ChatMessage
        temperature=turn.params.temperature,
        top_p=turn.params.top_p,
        max_tokens=turn.params.max_tokens,
    )


async def reply(session: ChatSession, producer: Producer, timeout: float) -> AsyncIterator[Turn]:
    """Answer the session's last turn, yielding it as the answer grows (at most every :data:`FRAME_SECONDS`)
    and once more at the end. Failures end up in ``turn.error``; never raises a broker error. Stopping is either
    :meth:`ChatSession.stop` (seen within :data:`STOP_POLL_SECONDS`) or closing/cancelling this iterator."""
    turn = session.turns[-1]
    session.streaming = True
    turn.started = time.time()
    events: JobEvents | None = None
    pending: asyncio.Future[AnyEvent] | None = None
    splitter: ReasoningSplitter | None = None  # set by the job's accepted event, when its worker's model reasons
    try:
        request = request_of(session, turn)
        job = request.to_job(timeout)
        turn.job_id = job.id
        events = await producer.submit(job)
        shown_at = 0.0
        while not events.finished and not turn.stopped:
            if pending is None:
                # a task of its own that the Stop polling leaves running: while no event comes, next_event looks
                # in on the job's worker every heartbeat interval, which a call cancelled sooner would never do
                pending = asyncio.ensure_future(events.next_event())
            done, _ = await asyncio.wait({pending}, timeout=STOP_POLL_SECONDS)
            if not done:
                continue
            event, pending = pending.result(), None
            if isinstance(event, Accepted):
                # the job (re)starts: after its worker died, another runs it again from the beginning
                turn.answer, turn.reasoning = "", ""
                splitter = reasoning_splitter(request, event)
            elif isinstance(event, Delta) and event.text:
                turn.take(splitter, event.text)
                if time.monotonic() - shown_at >= FRAME_SECONDS:
                    shown_at = time.monotonic()
                    # the person has seen text: a restart can no longer be hidden, it is a lost worker
                    events.committed = True
                    yield turn
            elif isinstance(event, Done):
                turn.take(splitter, "", final=True)
                turn.finish_reason = event.finish_reason.value
    except QueuechatError as exc:
        turn.error = messages.describe(exc, turn.model)
    except ValidationError as exc:
        turn.error = f"A parameter is out of range: {exc.errors()[0]['msg']}"
    except (asyncio.CancelledError, GeneratorExit):
        turn.stopped = True
        raise
    finally:
        if pending is not None:
            pending.cancel()
            if pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: a failure after Stop is nobody's news, not a logged error
        if events is not None:
            events.close()
        turn.finished = time.time()
        session.streaming = False
    yield turn


async def side_by_side(*replies: AsyncIterator[Turn]) -> AsyncIterator[int]:
    """Run several replies at once; yields the position of whichever advanced. Closing this iterator stops all
    of them (their jobs are cancelled at the workers)."""
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def pump(position: int, stream: AsyncIterator[Turn]) -> None:
        try:
            async for _ in stream:
                queue.put_nowait(position)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(replies)]
    try:
        running = len(tasks)
        while running:
            position = await queue.get()
            if position is None:
                running -= 1
            else:
                yield position
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
