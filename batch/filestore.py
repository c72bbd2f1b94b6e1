"""Batch files on disk: uploads saved under a size limit, input lines validated, results appended durably.

Files live in one directory (``QUEUECHAT_FILES_DIR``) shared by the API and the batch workers; names are ids the
server made, never the client's file name. Result files are appended one line at a time with fsync, and reopened
after a crash by cutting a torn last line, so the lines a result file holds are exactly the lines that finished.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.errors import FileTooLarge, InvalidRequest

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
CHUNK = 1 << 20


class BatchLine(BaseModel):
    """One request of a batch input file, as OpenAI's Batch API defines it."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


@dataclass
class FileSummary:
    lines: int = 0
    urls: set[str] = field(default_factory=set)


class Upload(Protocol):
    """What an upload is read through (Starlette's ``UploadFile`` is one)."""

    async def read(self, size: int = -1) -> bytes: ...


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


async def save_upload(upload: Upload, directory: Path, file_id: str, max_bytes: int) -> tuple[Path, int]:
    """Write the upload to ``directory/file_id.jsonl``; stop at ``max_bytes`` (nothing is kept then)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{file_id}.jsonl"
    partial = path.with_suffix(".upload")
    size = 0
    try:
        with partial.open("wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"The file is larger than the limit of {max_bytes} bytes.", param="file")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return path, size


def _line_error(number: int, exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "line"
    return InvalidRequest(f"Line {number}: invalid '{where}': {first.get('msg', 'invalid value')}.", param="file")


def parse_line(number: int, raw: bytes) -> BatchLine:
    """One line of a batch input file, read the one way both the upload check and the runner read it; a bad line is
    a 400 naming its line number."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"Line {number}: not valid JSON.", param="file") from None
    except RecursionError:
        raise InvalidRequest(f"Line {number}: the JSON is nested too deeply.", param="file") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"Line {number}: expected a JSON object.", param="file")
    try:
        line = BatchLine.model_validate(data)
    except ValidationError as exc:
        raise _line_error(number, exc) from None
    if not_unicode_at(line.custom_id) is not None:  # it could not be written back into a result
        raise InvalidRequest(f"Line {number}: invalid 'custom_id': it is not valid Unicode.", param="file")
    return line


def validate_batch_file(path: Path, max_requests: int) -> FileSummary:
    """Check every line of a batch input file; the first bad one is a 400 naming its line number."""
    summary = FileSummary()
    seen: set[str] = set()
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            line = parse_line(number, raw)
            if line.url not in BATCH_ENDPOINTS:
                raise InvalidRequest(
                    f"Line {number}: url must be one of {', '.join(BATCH_ENDPOINTS)}, not {line.url!r}.", param="file"
                )
            if line.custom_id in seen:
                raise InvalidRequest(f"Line {number}: custom_id {line.custom_id!r} is used twice.", param="file")
            seen.add(line.custom_id)
            summary.lines += 1
            summary.urls.add(line.url)
            if summary.lines > max_requests:
                raise InvalidRequest(f"The file has more than {max_requests} requests.", param="file")
    if not summary.lines:
        raise InvalidRequest("The file has no requests.", param="file")
    return summary


def read_batch_lines(path: Path) -> list[BatchLine]:
    """The lines of a file that :func:`validate_batch_file` accepted, parsed exactly as it parsed them (pydantic's
    own JSON parser refuses escapes that ``json`` accepts, such as a lone surrogate, and would fail the whole
    batch)."""
    with path.open("rb") as lines:
        return [parse_line(number, raw) for number, raw in enumerate(lines, start=1) if raw.strip()]


def not_unicode_at(value: Any) -> str | None:
    """Where a JSON value holds a string that is not valid Unicode, in OpenAI's param notation (``""`` for the
    value itself); None when it holds none. JSON's escapes can spell a lone surrogate (``"\\ud800"``), which no
    tokenizer, UTF-8 encoder or result file takes."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:  # not recursive: a line may nest as deep as the JSON parser went
        path, item = todo.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return path
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                name = str(key).encode("utf-8", "backslashreplace").decode()  # the path itself must be Unicode
                where = f"{path}.{name}" if path else name
                if not _is_unicode(str(key)):
                    return where
                todo.append((where, child))
        elif isinstance(item, list):
            todo.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ResultFile:
    """An append-only JSONL result file that survives being killed mid-write.

    Opening it drops a torn last line and returns the custom_ids already written, so a resumed batch neither
    repeats nor loses a line. Each :meth:`append` is flushed and fsynced before the line counts as finished.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.custom_ids = self._recover()
        self._out = path.open("ab")

    def _recover(self) -> set[str]:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return set()
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):  # killed in the middle of a line
            with self.path.open("r+b") as f:
                f.truncate(len(whole))
                os.fsync(f.fileno())
        return {json.loads(line)["custom_id"] for line in whole.splitlines() if line.strip()}

    def append(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self._out.flush()
        os.fsync(self._out.fileno())
        self.custom_ids.add(record["custom_id"])

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        self._out.close()
