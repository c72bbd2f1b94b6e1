"""The web UI's chat logic with the tiny model through a real Redis: replies, Stop and Clear, side by side, the
error messages a person sees, a reasoning model's thinking, restarts, and the limits on input and turns. The browser
drives it in test_webui_browser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from broker.connection import async_client, sync_client
from broker.keys import Keys
from broker.producer import Producer
from broker.schemas import Accepted, Delta, Done, FinishReason, Job, JobKind, Usage
from broker.settings import Settings
from tests import webui_support
from tests.conftest import RunningWorker, wait_for
from tests.integration.test_reasoning import think_template
from tests.webui_support import answer, idle_model, started
from webui.chat import ChatSession, InputRejected, Params, Shown, reply, side_by_side
from webui.tabs import chatbot_value

# The shared fixture, bound here so pytest finds it in this module (an import of it would trip ruff's F811 at
# every test that takes it).
producer = webui_support.producer


async def test_a_conversation_streams_and_carries_its_history(
    start_worker: Callable[..., RunningWorker], producer: Producer
) -> None:
    await started(start_worker, producer)
    session = ChatSession(system_prompt="Be brief.")
    session.ask("Hello", "tiny", Params(temperature=0.0, max_tokens=24))
    frames = [len(t.answer) async for t in reply(session, producer, timeout=60)]
    first = session.turns[0]
    assert first.answer and first.error is None and not first.stopped
    assert first.finish_reason == "length"  # the tiny model never ends by itself
    assert frames[-1] == len(first.answer) and frames == sorted(frames)  # the answer only grows
    assert first.finished is not None and first.finished >= first.started

    session.ask("And then?", "tiny", Params(temperature=0.0, max_tokens=8))
    assert session.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first.answer},
        {"role": "user", "content": "And then?"},
    ]
    await answer(session, producer)
    assert session.turns[1].answer and session.turns[1].error is None
    assert [shown.role for shown in session.display()] == ["user", "assistant", "user", "assistant"]


async def test_closing_a_reply_cancels_the_job_at_the_worker(
    start_worker: Callable[..., RunningWorker], producer: Producer, settings: Settings
) -> None:
    """What Stop does: the reply iterator is closed mid-answer, and the worker stops generating that job."""
    worker = (await started(start_worker, producer)).worker
    session = ChatSession()
    max_tokens = 3000
    session.ask("Tell me a long story", "tiny", Params(max_tokens=max_tokens))
    stream = reply(session, producer, timeout=60)
    assert isinstance(stream, AsyncGenerator)  # closed early below, as the UI closes it
    async for turn in stream:
        if turn.answer:
            break
    await stream.aclose()
    turn = session.turns[0]
    assert turn.stopped and not session.streaming and turn.finished is not None
    assert "*(stopped)*" in session.display()[-1][1]
    await asyncio.to_thread(wait_for, lambda: worker.totals["cancelled"] == 1 and not worker.jobs, 20)
    assert settings.redis_url
    stats = sync_client(settings.redis_url).hgetall(Keys(settings.key_prefix).stats("tiny"))
    assert int(stats[b"cancelled"]) == 1 and b"completed" not in stats
    assert int(stats[b"output_tokens"]) < max_tokens


async def test_stop_ends_a_reply_whose_job_is_still_queued(settings: Settings, producer: Producer) -> None:
    """Stop while no worker has taken the job yet: the reply ends without waiting for an event, and its channel
    loses its subscriber, so the worker that reads the job later drops it."""
    consumer = idle_model(settings, "slow", live=True)
    session = ChatSession()
    turn = session.ask("Hello", "slow", Params())
    task = asyncio.ensure_future(answer(session, producer))
    await asyncio.to_thread(wait_for, lambda: consumer.client.xlen(consumer.keys.jobs("slow")) == 1, 10)
    session.stop()
    await asyncio.wait_for(task, timeout=10)
    assert turn.stopped and not session.streaming and turn.job_id
    channel = consumer.keys.events(turn.job_id)
    await asyncio.to_thread(wait_for, lambda: consumer.client.pubsub_numsub(channel)[0][1] == 0, 10)


async def test_clear_while_streaming_cancels_the_job_and_empties_the_session(
    start_worker: Callable[..., RunningWorker], producer: Producer
) -> None:
    worker = (await started(start_worker, producer)).worker
    session = ChatSession()
    session.ask("Tell me a long story", "tiny", Params(max_tokens=3000))
    old_id = session.id
    async for turn in reply(session, producer, timeout=60):
        if turn.answer and session.turns:
            session.clear()
    assert session.turns == [] and session.id != old_id and not session.streaming
    assert session.display() == [] and session.last_answered is None
    await asyncio.to_thread(wait_for, lambda: worker.totals["cancelled"] == 1 and not worker.jobs, 20)


async def test_two_models_answer_side_by_side(start_worker: Callable[..., RunningWorker], producer: Producer) -> None:
    await started(start_worker, producer, "tiny,tiny-b")
    left, right = ChatSession(), ChatSession()
    left.ask("Hi", "tiny", Params(max_tokens=16))
    right.ask("Hi", "tiny-b", Params(max_tokens=16))
    advanced = {p async for p in side_by_side(reply(left, producer, 60), reply(right, producer, 60))}
    assert advanced == {0, 1}
    assert all(s.turns[0].answer and s.turns[0].error is None for s in (left, right))


async def test_a_model_without_workers_says_so(settings: Settings, producer: Producer) -> None:
    idle_model(settings, "gone", live=False)
    session = ChatSession()
    session.ask("Hello", "gone", Params())
    await answer(session, producer)
    error = session.turns[0].error
    assert error and error.startswith("No worker is serving gone right now")
    assert not session.turns[0].answer and not session.streaming


async def test_a_full_queue_says_when_to_retry(settings: Settings) -> None:
    assert settings.redis_url
    full = settings.model_copy(update={"max_queue_len": 2})
    consumer = idle_model(full, "busy", live=True)
    producer = Producer(async_client(settings.redis_url), full)
    try:
        queued = [
            await producer.submit(Job(kind=JobKind.CHAT, model="busy", messages=[], deadline=time.time() + 30))
            for _ in range(2)
        ]
        session = ChatSession()
        session.ask("Hello", "busy", Params())
        await answer(session, producer)
        assert session.turns[0].error == "The queue of busy is full. Retry in 1 s."  # 2 jobs, 2 slots
        for events in queued:
            events.close()
    finally:
        await producer.close()
    assert consumer.client.xlen(consumer.keys.jobs("busy")) == 2


async def test_a_worker_lost_mid_answer_keeps_the_partial_answer(settings: Settings, producer: Producer) -> None:
    """The job starts over on another worker (a new ``accepted``) after text was shown: the person is told the
    worker was lost, and the partial answer stays."""
    consumer = idle_model(settings, "fragile", live=True)
    session = ChatSession()
    session.ask("Hello", "fragile", Params())
    stream = reply(session, producer, timeout=30)
    pending = asyncio.ensure_future(stream.__anext__())
    (delivery,) = await asyncio.to_thread(wait_for, lambda: consumer.read(1, 100), 10)
    job_id = delivery.job.id
    consumer.publish(
        [
            (job_id, Accepted(seq=0, worker="fragile-worker", attempt=1, prompt_tokens=3)),
            (job_id, Delta(seq=1, text="Half an ans", token_ids=[1, 2])),
        ]
    )
    assert (await pending).answer == "Half an ans"  # shown
    consumer.publish([(job_id, Accepted(seq=0, worker="other-worker", attempt=2, prompt_tokens=3))])
    async for _ in stream:
        pass
    turn = session.turns[0]
    assert turn.answer == "Half an ans"
    assert turn.error and turn.error.startswith("The worker was lost mid-answer")
    assert session.display()[-1][1].startswith("Half an ans\n\n⚠️ The worker was lost mid-answer")
    # the next turn does not hide the failure from the model: the partial answer is history like any other
    session.ask("Go on", "fragile", Params())
    assert session.messages()[1] == {"role": "assistant", "content": "Half an ans"}


THOUGHT = ["Paris is in France", "; it is sunny there", ".\n</th", "ink>\n\n", "It is sunny", " in Paris."]


async def _scripted_reply(settings: Settings, producer: Producer, **parsers: Any) -> ChatSession:
    """A conversation whose one answer is ``THOUGHT``, from a worker whose ``accepted`` names these parsers."""
    consumer = idle_model(settings, "thinker", live=True)
    session = ChatSession()
    session.ask("Weather in Paris?", "thinker", Params())
    task = asyncio.ensure_future(answer(session, producer))
    (delivery,) = await asyncio.to_thread(wait_for, lambda: consumer.read(1, 100), 10)
    job_id = delivery.job.id
    accepted = Accepted(seq=0, worker="thinker-worker", attempt=1, prompt_tokens=3, **parsers)
    deltas = [Delta(seq=i + 1, text=text, token_ids=[i]) for i, text in enumerate(THOUGHT)]
    usage = Usage(prompt_tokens=3, completion_tokens=len(THOUGHT))
    done = Done(seq=len(THOUGHT) + 1, finish_reason=FinishReason.STOP, usage=usage)
    events: list[Accepted | Delta | Done] = [accepted, *deltas, done]
    consumer.publish([(job_id, e) for e in events])
    await asyncio.wait_for(task, timeout=10)
    return session


async def test_a_reasoning_models_thinking_is_shown_apart_from_its_answer(
    settings: Settings, producer: Producer
) -> None:
    session = await _scripted_reply(settings, producer, reasoning_parser="deepseek_r1", reasoning_open=True)
    turn = session.turns[0]
    assert turn.reasoning == "Paris is in France; it is sunny there.\n"
    assert turn.answer == "It is sunny in Paris."  # no tag, no thinking in it
    assert session.display() == [
        Shown("user", "Weather in Paris?"),
        Shown("assistant", turn.reasoning, "done"),
        Shown("assistant", "It is sunny in Paris."),
    ]
    thought, shown_answer = chatbot_value(session)[1:]
    assert thought["metadata"] == {"title": "Thinking", "status": "done"}  # a collapsed thought of its own
    assert "metadata" not in shown_answer and shown_answer["content"][0]["text"] == "It is sunny in Paris."
    session.ask("And tomorrow?", "thinker", Params())
    assert session.messages()[1] == {"role": "assistant", "content": "It is sunny in Paris."}  # no thinking sent back


async def test_without_a_reasoning_parser_the_text_is_left_as_it_is(settings: Settings, producer: Producer) -> None:
    session = await _scripted_reply(settings, producer)
    assert (session.turns[0].answer, session.turns[0].reasoning) == ("".join(THOUGHT), "")
    assert [shown.thinking for shown in session.display()] == [None, None]


async def test_a_tiny_reasoning_worker_thinks_in_a_pending_thought_then_is_cut_short(
    start_worker: Callable[..., RunningWorker], producer: Producer, tmp_path: Path
) -> None:
    """The template opens ``<think>`` and the random model never closes it: all it writes is thinking."""
    await started(start_worker, producer, conv_template=think_template(tmp_path), reasoning_parser="deepseek_r1")
    session = ChatSession()
    session.ask("Hello", "tiny", Params(max_tokens=12))
    drawn = []
    async for _ in reply(session, producer, timeout=60):
        drawn.append([shown.thinking for shown in session.display()])
    turn = session.turns[0]
    assert turn.reasoning and turn.answer == "" and turn.finish_reason == "length"
    assert any("pending" in frame for frame in drawn[:-1])  # while it thinks, the thought is open
    assert not any("done" in frame for frame in drawn[:-1])
    *_, thought, note = session.display()
    assert (thought.text, thought.thinking) == (turn.reasoning, "done")
    assert "cut short while the model was thinking" in note.text and turn.reasoning not in note.text


async def test_a_restart_before_any_text_is_invisible(settings: Settings, producer: Producer) -> None:
    consumer = idle_model(settings, "fragile", live=True)
    session = ChatSession()
    session.ask("Hello", "fragile", Params())
    task = asyncio.ensure_future(answer(session, producer))
    (delivery,) = await asyncio.to_thread(wait_for, lambda: consumer.read(1, 100), 10)
    job_id = delivery.job.id
    consumer.publish(
        [
            (job_id, Accepted(seq=0, worker="fragile-worker", attempt=1, prompt_tokens=3)),
            (job_id, Accepted(seq=0, worker="other-worker", attempt=2, prompt_tokens=3)),
            (job_id, Delta(seq=1, text="A whole answer", token_ids=[1, 2])),
            (job_id, Done(seq=2, finish_reason=FinishReason.STOP, usage=Usage(prompt_tokens=3, completion_tokens=2))),
        ]
    )
    await asyncio.wait_for(task, timeout=10)
    turn = session.turns[0]
    assert (turn.answer, turn.error, turn.finish_reason) == ("A whole answer", None, "stop")


def test_input_length_and_turn_limits() -> None:
    session = ChatSession()
    session.check("x" * 12_000, max_chars=12_000, max_turns=50)
    with pytest.raises(InputRejected, match=r"12,001 characters; the limit is 12,000"):
        session.check("x" * 12_001, max_chars=12_000, max_turns=50)
    for i in range(50):
        session.ask(f"turn {i}", "tiny", Params())
    with pytest.raises(InputRejected, match=r"reached 50 turns\. Press Clear"):
        session.check("one more", max_chars=12_000, max_turns=50)


def test_regenerate_replaces_the_last_answer() -> None:
    session = ChatSession()
    assert session.retry("tiny", Params()) is None
    session.ask("Hello", "tiny", Params(max_tokens=8))
    session.turns[0].answer = "first try"
    again = session.retry("tiny-b", Params(max_tokens=16))
    assert again is not None and session.turns == [again]
    assert (again.user, again.model, again.answer, again.params.max_tokens) == ("Hello", "tiny-b", "", 16)
