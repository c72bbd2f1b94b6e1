"""How the Responses API runs a chat job: the one module here that calls into the serving layer's chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from broker.producer import JobEvents, Producer
from serving.chat import ChatStream, chat_answer
from serving.jobs import JobObserver, submit_all
from serving.requests import ChatCompletionRequest


async def answer(producer: Producer, chat: ChatCompletionRequest, observer: JobObserver | None) -> dict[str, Any]:
    """The whole chat completion (a job restarted on another worker is followed, as for chat)."""
    completion = await chat_answer(producer, chat, observer)
    return completion.model_dump(mode="json")


async def open_stream(
    producer: Producer, chat: ChatCompletionRequest, observer: JobObserver | None, job_hex: str
) -> tuple[list[JobEvents], AsyncIterator[dict[str, Any]]]:
    """Submit the job ``job-{job_hex}`` and wait for its first event (an error before the first token raises, to
    be a 4xx); then its chat stream's chunks. The caller closes the streams."""
    job = chat.to_job(producer.settings.request_timeout)
    job.id = f"job-{job_hex}"  # the response id's hex: the response is findable in worker logs
    streams = await submit_all(producer, [job], observer)
    return streams, _chunks(ChatStream(chat, streams, f"chatcmpl-{job_hex}"))


async def _chunks(stream: ChatStream) -> AsyncIterator[dict[str, Any]]:
    async for chunk in stream.chunks():
        yield chunk.model_dump(mode="json", exclude_none=True)
