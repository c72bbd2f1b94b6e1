"""How the Responses API runs a chat job: the one module here that calls into the serving layer's chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from broker.jobevents import JobEvents
from broker.producer import Producer
from serving.chat import ChatStream, chat_answer
from serving.jobs import JobObserver, reattach, submit_all
from serving.requests import ChatCompletionRequest

# The chat request rebuilt to stream a response again, from its recorded options: its messages are not needed.
_NO_MESSAGES = [{"role": "user", "content": "-"}]


async def answer(producer: Producer, chat: ChatCompletionRequest, observer: JobObserver | None) -> dict[str, Any]:
    """The whole chat completion (a job restarted on another worker is followed, as for chat)."""
    completion = await chat_answer(producer, chat, observer)
    return completion.model_dump(mode="json")


async def open_stream(
    producer: Producer,
    chat: ChatCompletionRequest,
    observer: JobObserver | None,
    job_hex: str,
    resume: dict[str, Any] | None = None,
) -> tuple[list[JobEvents], AsyncIterator[dict[str, Any]]]:
    """Submit the job ``job-{job_hex}`` and wait for its first event (an error before the first token raises, to
    be a 4xx); then its chat stream's chunks. The caller closes the streams. ``resume`` is kept in the job's log,
    for streaming the response again (see :func:`reopen_stream`)."""
    job = chat.to_job(producer.settings.request_timeout)
    job.id = f"job-{job_hex}"  # the response id's hex: the response is findable in worker logs
    streams = await submit_all(producer, [job], observer, resume=resume)
    return streams, _chunks(ChatStream(chat, streams, f"chatcmpl-{job_hex}"))


def resume_record(chat: ChatCompletionRequest, response: dict[str, Any]) -> dict[str, Any]:
    """What a streamed background response's job log keeps to stream it again: the chat request's options (not
    its messages, the worker's business only) and the response as it was created."""
    return {"chat": chat.model_dump(mode="json", exclude={"messages"}, exclude_unset=True), "response": response}


async def reopen_stream(
    producer: Producer, job_hex: str
) -> tuple[dict[str, Any], JobEvents, AsyncIterator[dict[str, Any]]] | None:
    """The job ``job-{job_hex}`` from its first event (read back from its log) to its last (live): the response
    as created, the job's events (the caller closes them) and its chat stream's chunks, the same chunks its first
    stream had; None when its log is gone or it kept nothing to resume with."""
    job_id = f"job-{job_hex}"
    meta = (await producer.job_log(job_id)).meta or {}
    record = meta.get("resume")
    if not isinstance(record, dict) or not isinstance(record.get("response"), dict):
        return None
    try:
        chat = ChatCompletionRequest.model_validate({**record.get("chat", {}), "messages": _NO_MESSAGES})
    except ValidationError:
        return None
    events = await reattach(producer, job_id, meta)
    return record["response"], events, _chunks(ChatStream(chat, [events], f"chatcmpl-{job_hex}"))


async def _chunks(stream: ChatStream) -> AsyncIterator[dict[str, Any]]:
    async for chunk in stream.chunks():
        yield chunk.model_dump(mode="json", exclude_none=True)
