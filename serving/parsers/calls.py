"""Reading tool calls out of generated text as it comes, whatever the format.

Every format marks where calls are (a region: from an opening tag to a closing one, or to the end of the output)
and writes calls inside; :class:`CallFormat` says where a format's regions are and which calls a region's text
shows so far. :class:`CallParser` does the rest the same for every format: text outside regions is content, sent
as it comes (holding back what may still become an opening tag); inside a region each call is sent as OpenAI
streams one, its name first (:class:`CallBegin`), then fragments of its arguments (:class:`CallArguments`) as
they are generated. A region that ends without being valid calls is content after all, unless its calls had
begun to be sent (sent is sent: the finish reason tells a call cut short). A whole output (:func:`read_whole`) is
read the same, but a region is judged whole before anything of it is sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from serving.parsers.think import partial_suffix


@dataclass
class Found:
    """A call as far as the text shows it: its name, and its arguments (JSON text) so far or whole."""

    name: str
    arguments: str


@dataclass
class CallBegin:
    index: int
    name: str


@dataclass
class CallArguments:
    index: int
    fragment: str


Piece = str | CallBegin | CallArguments  # a str is content


class CallFormat:
    """A format's regions open with ``opening`` anywhere in the output and end with ``closing`` (None: at the end
    of the output). Subclasses say what calls a region's text holds."""

    opening: str = ""
    closing: str | None = None

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools = tools

    def find_opening(self, text: str, at_start: bool) -> tuple[int, int] | None:
        """(where a region begins in ``text``, where its calls begin), or None. ``at_start``: no content yet."""
        at = text.find(self.opening)
        return (at, at + len(self.opening)) if at >= 0 else None

    def holds(self, text: str, at_start: bool) -> int:
        """How much of the end of ``text`` (no region in it) may still become an opening: held back."""
        return partial_suffix(text, self.opening)

    def calls(self, body: str, final: bool) -> list[Found] | None:
        """The calls in a region's text: so far (``final`` False; the last one's arguments may be partial), or
        once the region is complete, all of them, or None when it is not only valid calls."""
        raise NotImplementedError


@dataclass
class CallParser:
    """One choice's output read into content and calls, as it comes (:meth:`feed`, then :meth:`finish`)."""

    format: CallFormat
    pending: str = ""
    body: str | None = None  # the text of the region being read, None outside one
    opened_by: str = ""  # the text that opened it, given back as content if the region is no call
    names: list[str] = field(default_factory=list)  # of the calls begun
    sent: list[str] = field(default_factory=list)  # their arguments as sent
    region_first: int = 0  # the index of the region's first call
    shown: bool = False  # content other than whitespace was sent
    streaming: bool = True  # False: a whole output, whose calls are sent only once their region is judged whole

    def _content(self, out: list[Piece], text: str) -> None:
        if text:
            out.append(text)
            self.shown = self.shown or bool(text.strip())

    def _send(self, found: list[Found]) -> list[Piece]:
        out: list[Piece] = []
        for offset, call in enumerate(found):
            index = self.region_first + offset
            if index == len(self.names):
                self.names.append(call.name)
                self.sent.append("")
                out.append(CallBegin(index, call.name))
            if call.arguments.startswith(self.sent[index]) and len(call.arguments) > len(self.sent[index]):
                out.append(CallArguments(index, call.arguments[len(self.sent[index]) :]))
                self.sent[index] = call.arguments
        return out

    def _close(self, closed_by: str) -> list[Piece]:
        assert self.body is not None
        found = self.format.calls(self.body, final=True)
        out: list[Piece] = []
        if found:
            out = self._send(found)
        elif len(self.names) == self.region_first:  # nothing of it sent: it was text after all
            self._content(out, self.opened_by + self.body + closed_by)
        self.body = None
        return out

    def feed(self, text: str) -> list[Piece]:
        """The pieces ``text`` makes ready to send."""
        self.pending += text
        out: list[Piece] = []
        while True:
            if self.body is None:
                found = self.format.find_opening(self.pending, not self.shown)
                if found is None:
                    keep = self.format.holds(self.pending, not self.shown)
                    self._content(out, self.pending[: len(self.pending) - keep])
                    self.pending = self.pending[len(self.pending) - keep :]
                    return out
                start, body_start = found
                self._content(out, self.pending[:start])
                self.opened_by, self.body = self.pending[start:body_start], ""
                self.pending = self.pending[body_start:]
                self.region_first = len(self.names)
            closing = self.format.closing
            end = self.pending.find(closing) if closing else -1
            if end < 0:
                keep = partial_suffix(self.pending, closing) if closing else 0
                self.body += self.pending[: len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep :]
                if not self.streaming:
                    return out
                return out + self._send(self.format.calls(self.body, final=False) or [])
            assert closing is not None
            self.body += self.pending[:end]
            self.pending = self.pending[end + len(closing) :]
            out += self._close(closing)

    def finish(self) -> list[Piece]:
        """What is still held back, once the output is complete."""
        if self.body is not None:
            self.body += self.pending
            self.pending = ""
            return self._close("")
        out: list[Piece] = []
        self._content(out, self.pending)
        self.pending = ""
        return out

    @property
    def calls(self) -> list[Found]:
        """The calls sent, with their arguments as sent."""
        return [Found(name, arguments) for name, arguments in zip(self.names, self.sent, strict=True)]


def read_whole(parser: CallParser, text: str) -> tuple[str, list[Found]]:
    """(the content, the calls) of a whole output."""
    parser.streaming = False
    pieces = parser.feed(text) + parser.finish()
    return "".join(p for p in pieces if isinstance(p, str)), parser.calls


# ------------------------------------------------------------------ calls written as JSON objects

_DECODER = json.JSONDecoder()
# How a call object begins when its name comes first, as models write it: up to here, its arguments follow.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_.-]+)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_OBJECT_END = re.compile(r"\s*\}")


def json_value_end(text: str, start: int) -> int | None:
    """Where the JSON object or array opening at ``text[start]`` ends (past its closing bracket), None while it
    is still open."""
    depth, in_string, escaped = 0, False, False
    for at in range(start, len(text)):
        char = text[at]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return at + 1
    return None


def is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _decoded_call(text: str, at: int) -> tuple[Found, int] | None:
    """A call object at ``text[at]`` written some other way (its keys in another order, other keys beside), read
    whole: (the call, its arguments re-written; where it ends)."""
    try:
        call, end = _DECODER.raw_decode(text, at)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str) and is_object(arguments):  # some models write the arguments as a JSON string
        return Found(call["name"], arguments), end
    return (Found(call["name"], json.dumps(arguments)), end) if isinstance(arguments, dict) else None


def json_calls(text: str, final: bool, *, separator: str = "", closing: str = "") -> list[Found] | None:
    """Calls written as JSON objects ``{"name": ..., "arguments" (or "parameters"): {...}}`` one after another,
    between them ``separator`` (and whitespace), after them ``closing``. While they are generated the calls whose
    name is known so far; once complete, all of them (None if the text is anything else). Arguments are the text
    the model wrote, so that a stream's fragments add up to them."""
    found: list[Found] = []
    between = re.compile(r"\s*(?:" + re.escape(separator) + r"\s*)?" if separator else r"\s*")
    at = 0
    while True:
        rest = text[at:].strip()
        if not rest or rest == closing:
            return (found or None) if final else found
        if not final and closing.startswith(rest):
            return found
        head = _HEAD.match(text, at)
        end = json_value_end(text, head.end()) if head and text[head.end() : head.end() + 1] == "{" else None
        closed = _OBJECT_END.match(text, end) if head and end is not None else None
        if head and end is not None and closed is not None:
            found.append(Found(head.group(1), text[head.end() : end]))
            at = closed.end()
        elif final:
            decoded = _decoded_call(text, len(text) - len(text[at:].lstrip()))
            if decoded is None:
                return None
            found.append(decoded[0])
            at = decoded[1]
        else:
            if head and text[head.end() : head.end() + 1] == "{":
                found.append(Found(head.group(1), text[head.end() : end]))
            return found
        moved = between.match(text, at)
        at = moved.end() if moved else at
        if final and found and not is_object(found[-1].arguments):
            return None
