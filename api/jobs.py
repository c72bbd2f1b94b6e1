"""Moved to :mod:`serving.jobs` (events) and :mod:`serving.requests` (``to_job``); kept so that code written against
the earlier layout still imports. New code imports from :mod:`serving`."""

from __future__ import annotations

from broker.schemas import Job, SamplingParams
from serving.jobs import ChoiceText, Collected, JobObserver, collect, merged, submit_all
from serving.requests import ChatCompletionRequest, CompletionRequest

__all__ = [
    "ChoiceText",
    "Collected",
    "JobObserver",
    "chat_job",
    "collect",
    "completion_jobs",
    "merged",
    "sampling_params",
    "submit_all",
]


def sampling_params(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    return body.sampling_params()


def chat_job(body: ChatCompletionRequest, timeout: float) -> Job:
    return body.to_job(timeout)


def completion_jobs(body: CompletionRequest, timeout: float) -> list[Job]:
    return body.to_jobs(timeout)
