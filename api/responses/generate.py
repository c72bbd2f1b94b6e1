"""How the Responses API runs a chat job: the one module here that calls into the chat endpoint's machinery
(:func:`api.chat.chat_answer`, :func:`api.chat.chat_stream`, :func:`api.jobs.chat_job`, :func:`api.jobs.submit_all`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from api.chat import chat_answer, chat_stream
from api.jobs import chat_job, submit_all
from api.metrics import ApiMetrics
from api.schemas import ChatCompletionRequest
from broker.producer import JobEvents, Producer


async def answer(producer: Producer, chat: ChatCompletionRequest, metrics: ApiMetrics | None) -> dict[str, Any]:
    """The whole chat completion (a job restarted on another worker is followed, as for chat)."""
    return await chat_answer(producer, chat, metrics)


async def open_stream(
    producer: Producer, chat: ChatCompletionRequest, metrics: ApiMetrics | None, job_hex: str
) -> tuple[list[JobEvents], AsyncIterator[str]]:
    """Submit the job ``job-{job_hex}`` and wait for its first event (an error before the first token raises, to
    be a 4xx); then its chat stream's JSON chunks. The caller closes the streams."""
    job = chat_job(chat, producer.settings.request_timeout)
    job.id = f"job-{job_hex}"  # the response id's hex: the response is findable in worker logs
    streams = await submit_all(producer, [job], metrics)
    return streams, chat_stream(streams, chat, f"chatcmpl-{job_hex}", int(time.time()))
