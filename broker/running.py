"""The running ``queuechat up`` of this user: where its Redis is, so that other commands find it by default.

``queuechat up`` writes a small JSON file (its Redis URL, its pid) and removes it on exit; ``queuechat info``, a
second ``queuechat worker`` and the rest read it when neither ``--redis-url`` nor ``QUEUECHAT_REDIS_URL`` says
where Redis is. A file left behind by an ``up`` that was killed outright names a dead pid and is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def running_file() -> Path:
    """``$XDG_RUNTIME_DIR/queuechat/up.json`` (a per-user tmpfs, emptied at logout), else under ``~/.cache``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "queuechat" / "up.json"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "queuechat" / "up.json"


def write_running(redis_url: str) -> Path:
    """Say where this process's Redis is (readable by this user only: the URL may hold a password)."""
    path = running_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"redis_url": redis_url, "pid": os.getpid()}, out)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def remove_running() -> None:
    """Remove the file if this process wrote it (a later ``up`` may have replaced it)."""
    path = running_file()
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_redis_url() -> str | None:
    """The Redis URL of this user's running ``queuechat up``, or None when none runs."""
    try:
        record = json.loads(running_file().read_text())
        url, pid = record["redis_url"], int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if isinstance(url, str) and _alive(pid) else None
