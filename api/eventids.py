"""The ids of a streamed response's SSE events, so a client that lost its connection can resume the stream with
``Last-Event-ID`` (see api/resume.py).

An id is ``{seq}-{k}``: the ``seq`` of the last job event the response had taken when the chunk was written, and
the chunk's place among the chunks written since that event. A response's chunks are a function of its job's
events alone, so replaying the job's log through the same code writes the same chunks under the same ids, and a
resumed stream sends exactly the chunks after the client's last id. A response made of several jobs (completions
of several prompts) numbers its events ``0-{k}`` and cannot be resumed; a completion of one prompt is one job,
whatever its ``n``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from broker.jobevents import JobEvents

EVENT_ID = re.compile(r"^(\d{1,12})-(\d{1,6})$")


class EventIds:
    def __init__(self, streams: Sequence[JobEvents]) -> None:
        self._job = streams[0] if len(streams) == 1 else None
        self._seq = -1
        self._k = 0

    def next(self) -> tuple[int, int]:
        seq = self._job.last_seq if self._job is not None else 0
        if seq != self._seq:
            self._seq, self._k = seq, 0
        else:
            self._k += 1
        return seq, self._k


def format_id(event_id: tuple[int, int]) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def parse_id(text: str) -> tuple[int, int] | None:
    """``Last-Event-ID`` as a comparable pair; None when it is not an id this server writes."""
    match = EVENT_ID.match(text.strip())
    return (int(match[1]), int(match[2])) if match else None
