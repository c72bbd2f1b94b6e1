"""Reading Server-Sent Events as a browser's EventSource does: each event's ``id:`` and ``data:``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    data: str


def parse_sse(lines: Iterable[str]) -> list[SseEvent]:
    events: list[SseEvent] = []
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                events.append(SseEvent(event_id, "\n".join(data)))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        events.append(SseEvent(event_id, "\n".join(data)))
    return events
