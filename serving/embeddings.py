"""Embeddings: one ``embedding`` job per request, whatever the number of inputs.

The worker sends the vectors as base64 little-endian float32 (see ``broker.schemas.Done``); they are passed
through for ``encoding_format=base64`` and unpacked into floats otherwise, so both formats carry the same values
bit for bit.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.errors import JobFailed
from broker.producer import Producer
from broker.schemas import Job, JobKind
from serving.jobs import JobObserver, done_of
from serving.responses import Embedding, EmbeddingList, EmbeddingUsage

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > MAX_INPUTS and not all(isinstance(x, int) for x in items):
            raise ValueError(f"at most {MAX_INPUTS} inputs are allowed in one request")
        for item in items:
            if isinstance(item, str | list) and not item:
                raise ValueError("input must not contain an empty string or an empty token list")
            ids = item if isinstance(item, list) else [item] if isinstance(item, int) else []
            if any(t < 0 for t in ids):
                raise ValueError("token ids must not be negative")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs, one per embedding: a string, strings, one token id list, or token id lists."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(x, int) for x in value):
            return [cast(list[int], value)]
        return cast(list[str] | list[list[int]], value)

    def to_job(self, timeout: float, *, request_id: str | None = None) -> Job:
        return Job(
            kind=JobKind.EMBEDDING,
            model=self.model,
            inputs=self.inputs(),
            dimensions=self.dimensions,
            deadline=time.time() + timeout,
            request_id=request_id,
        )


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def embeddings_answer(
    producer: Producer,
    body: EmbeddingRequest,
    observer: JobObserver | None = None,
    *,
    request_id: str | None = None,
) -> EmbeddingList:
    """The embeddings list, as the endpoint answers it."""
    job = body.to_job(producer.settings.request_timeout, request_id=request_id)
    done = await done_of(producer, job, observer)
    if done is None or done.embeddings is None or len(done.embeddings) != len(job.inputs or []):
        raise JobFailed(f"the worker answered job {job.id} without its embeddings", status=502, code="bad_worker_reply")
    data = [
        Embedding(index=i, embedding=vector if body.encoding_format == "base64" else _floats(vector))
        for i, vector in enumerate(done.embeddings)
    ]
    tokens = done.usage.prompt_tokens
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingList(data=data, model=body.model, usage=usage)
