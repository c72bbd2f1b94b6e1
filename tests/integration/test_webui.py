"""The web UI's chat logic with the tiny model through a real Redis: replies, Stop, side by side, the error
messages a person sees, limits, the status strip and the vote log. The browser drives it in test_webui_browser."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.connection import async_client, sync_client
from broker.consumer import JobConsumer
from broker.keys import Keys
from broker.producer import Producer
from broker.registry import WorkerCard, WorkerRegistration, WorkerStatus
from broker.schemas import Accepted, Delta, Done, FinishReason, Job, JobKind, Usage
from broker.settings import Settings
from tests.conftest import RunningWorker, free_port, wait_for
from tests.integration.test_acl import role_urls  # noqa: F401  # the fixture: a Redis user per role
from tests.integration.test_reasoning import think_template
from webui.chat import ChatSession, InputRejected, Params, Shown, reply, side_by_side
from webui.main import parse_auth_file
from webui.status import ModelLoad, model_loads, status_line, status_markdown
from webui.tabs import chatbot_value
from webui.votes import VoteLog


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[Producer]:
    assert settings.redis_url
    producer = Producer(async_client(settings.redis_url), settings)
    try:
        yield producer
    finally:
        await producer.close()


def idle_model(settings: Settings, model: str, *, live: bool) -> JobConsumer:
    """A model whose stream exists but that nobody consumes: with ``live``, a registered worker that never reads
    (its queue only grows); without, a model whose workers are all gone."""
    assert settings.redis_url
    keys = Keys(settings.key_prefix)
    client = sync_client(settings.redis_url)
    consumer = JobConsumer(client, keys, [model], f"{model}-worker")
    consumer.ensure_groups()
    if live:
        card = WorkerCard(id=f"{model}-worker", models=[model], slots=2)
        WorkerRegistration(client, keys, card, ttl=60).heartbeat(WorkerStatus())
    return consumer


async def started(
    start_worker: Callable[..., RunningWorker], producer: Producer, names: str = "tiny", **options: Any
) -> RunningWorker:
    """A tiny worker, once the registry lists it."""
    running = start_worker(names, **options)
    deadline = time.monotonic() + 30
    while not set(names.split(",")) <= set(await producer.live_models()):
        assert time.monotonic() < deadline, "the worker did not register"
        await asyncio.sleep(0.05)
    return running


async def answer(session: ChatSession, producer: Producer) -> None:
    async for _ in reply(session, producer, timeout=60):
        pass


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


async def test_status_counts_workers_running_and_waiting_jobs(
    settings: Settings, producer: Producer, start_worker: Callable[..., RunningWorker]
) -> None:
    await started(start_worker, producer)
    idle_model(settings, "busy", live=True)
    for priority in (0, 0, 0, 2):  # priority 2: a stream of its own (fair queuing), counted with the model's
        job = Job(kind=JobKind.CHAT, model="busy", messages=[], deadline=time.time() + 30, priority=priority)
        await producer.submit(job)
    loads = {m.model: m for m in await model_loads(producer)}
    assert (loads["busy"].workers, loads["busy"].running, loads["busy"].waiting) == (1, 0, 4)
    assert (loads["tiny"].workers, loads["tiny"].waiting) == (1, 0)
    assert "**busy**: 1 worker, 0 running, 4 waiting" in status_markdown(list(loads.values()))
    assert status_markdown([]).startswith("No worker is serving any model right now")


def test_votes_append_one_json_line_per_vote_to_a_file_per_day(tmp_path: Path) -> None:
    log = VoteLog(tmp_path / "votes")
    session = ChatSession(system_prompt="Be kind.")
    turn = session.ask("Hello", "tiny", Params(temperature=0.3, top_p=0.9, max_tokens=32))
    turn.answer, turn.finished = "Hi!", time.time()
    path = log.chat_vote("upvote", session, "10.0.0.7")
    other = ChatSession()
    other.ask("Hello", "tiny-b", Params()).answer = "Hey"
    assert log.compare_vote("tievote", session, other, None) == path
    assert path.name == f"{time.strftime('%Y-%m-%d', time.gmtime())}-conv.json"
    up, tie = (json.loads(line) for line in path.read_text().splitlines())
    assert (up["type"], up["model"], up["ip"]) == ("upvote", "tiny", "10.0.0.7")
    (logged,) = up["state"]["turns"]
    assert (logged["user"], logged["answer"], logged["params"]) == (
        "Hello",
        "Hi!",
        {"temperature": 0.3, "top_p": 0.9, "max_tokens": 32},
    )
    assert logged["started"] <= logged["finished"] <= up["tstamp"]
    assert up["state"]["system_prompt"] == "Be kind." and up["state"]["conversation_id"] == session.id
    assert (tie["type"], tie["models"]) == ("tievote", ["tiny", "tiny-b"])
    with pytest.raises(ValueError):
        log.chat_vote("leftvote", session, None)


def test_auth_file_in_fastchat_format(tmp_path: Path) -> None:
    creds = tmp_path / "auth"
    creds.write_text("alice:wonder, bob:builder\n")
    assert parse_auth_file(creds) == [("alice", "wonder"), ("bob", "builder")]


def test_webui_command_has_fastchat_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "queuechat", "webui", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for flag in ("--host", "--port", "--share", "--model-list-mode", "--gradio-auth-path", "--concurrency-count",
                 "--redis-url"):  # fmt: skip
        assert flag in out


def test_standalone_server_asks_for_the_login_of_the_auth_file(settings: Settings, tmp_path: Path) -> None:
    """``python -m webui`` on its own port; with ``--gradio-auth-path`` nothing but the login page is served
    until a listed user logs in."""
    assert settings.redis_url
    creds = tmp_path / "auth"
    creds.write_text("alice:wonder")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--redis-url", settings.redis_url, "--gradio-auth-path", str(creds)]
    log = (tmp_path / "webui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "webui", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: httpx.get(f"{base}/", timeout=2).status_code == 200, timeout=120, interval=0.2)
        assert httpx.get(f"{base}/config", timeout=5).status_code == 401
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.post("/login", data={"username": "alice", "password": "nope"}).status_code == 400
            assert client.post("/login", data={"username": "alice", "password": "wonder"}).status_code == 200
            config = client.get("/config").json()
        assert config["title"] == "queuechat" and not config["analytics_enabled"]
    finally:
        server.terminate()
        server.wait(20)
        log.close()


@pytest.mark.parametrize("mode", ["once", "reload"])
async def test_model_list_modes(settings: Settings, mode: str, tmp_path: Path) -> None:
    """``once`` keeps the models seen at the first page load (the ↻ button still reads them afresh);
    ``reload`` reads the registry at every load."""
    from webui.backend import Backend
    from webui.settings import WebUISettings

    backend = Backend(settings, WebUISettings(model_list_mode=mode, log_dir=tmp_path))
    try:
        idle_model(settings, "first", live=True)
        assert await backend.models(fresh=False) == ["first"]
        idle_model(settings, "second", live=True)
        expected = ["first"] if mode == "once" else ["first", "second"]
        assert await backend.models(fresh=False) == expected
        assert await backend.models(fresh=True) == ["first", "second"]
    finally:
        await backend.close()


async def test_the_front_acl_role_is_enough_for_the_web_ui(
    settings: Settings,
    role_urls: dict[str, str],  # noqa: F811  # the fixture imported from test_acl
    start_worker: Callable[..., RunningWorker],
) -> None:
    """The web UI is a front server: with the ``front`` Redis user it answers and shows the status strip."""
    start_worker(settings_=settings.model_copy(update={"redis_url": role_urls["worker"]}))
    front = settings.model_copy(update={"redis_url": role_urls["front"]})
    producer = Producer(async_client(role_urls["front"]), front)
    try:
        deadline = time.monotonic() + 30
        while "tiny" not in await producer.live_models():
            assert time.monotonic() < deadline, "the worker did not register"
            await asyncio.sleep(0.05)
        session = ChatSession()
        session.ask("Hello", "tiny", Params(max_tokens=8))
        await answer(session, producer)
        assert session.turns[0].answer and session.turns[0].error is None
        # the worker acknowledges a job just after its last event, so the answer can be a moment ahead
        deadline = time.monotonic() + 10
        while (await model_loads(producer))[0] != ModelLoad("tiny", 1, 0, 0):
            assert time.monotonic() < deadline, await model_loads(producer)
            await asyncio.sleep(0.05)
        assert (await status_line(producer)).startswith("**tiny**: 1 worker")
    finally:
        await producer.close()
