"""A real ``redis-server`` (Debian's) on a free loopback port, for the tests and the benchmark.

Nothing is written to disk: ``--save ''``, ``--appendonly no`` (unless
``appendonly=True``: what survives a crash, as in production), and its
folder is one the caller gives (a temporary one).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import time
from pathlib import Path

_READY = b"Ready to accept connections"
_START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process that can be stopped and started again on its port."""

    def __init__(self, folder: Path, *, appendonly: bool = False) -> None:
        self.folder = folder
        self.appendonly = appendonly
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on a free port the first time, on the same port after)."""
        for _attempt in range(5):
            port = self.port or _free_port()
            if self._spawn(port):
                self.port = port
                return
            if self.port:  # the port we must keep is taken: nothing to retry
                break
        raise RuntimeError(f"redis-server did not start:\n{self._log}")

    def _spawn(self, port: int) -> bool:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no",
             "--dir", str(self.folder), "--logfile", ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        self._log = b""
        deadline = time.monotonic() + _START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while _READY not in self._log:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    process.kill()
                    process.wait()
                    return False
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:  # it exited (port taken?)
                    process.wait()
                    return False
                self._log += chunk
        self.process = process
        return True

    def stop(self) -> None:
        """Stop it now (SIGKILL: as abrupt as a crash) and wait until it is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None
