"""A real Redis for the durable tests: Debian's ``redis-server`` on a free loopback port.

One server serves the whole session; each test gets its own queue name, so
tests never see each other's tasks. A test that stops Redis takes a server
of its own (``own_redis``). Nothing is written to disk (``--save ''``,
``--appendonly no``, its folder is a temporary one).

This file imports nothing of streaQ: on Python < 3.11 (streaQ's floor) the
test modules skip themselves with that reason.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

_READY = b"Ready to accept connections"
_LEAK = "Unclosed <MemoryObject"
_LEAK_MODULE = "anyio.streams.memory"


def pytest_configure(config: pytest.Config) -> None:
    # coredis (streaQ's Redis client) makes a connection's AnyIO memory
    # streams before it connects and closes them only once connected: each
    # refused connection (the tests of Redis being down) leaves some for the
    # garbage collector, whose ResourceWarning filterwarnings=error would
    # turn into a failure of whichever test runs then. Nothing of ours uses
    # AnyIO's memory streams.
    # (The ini line covers the tests, the direct filter the garbage collector
    # running between them.)
    config.addinivalue_line("filterwarnings", f"ignore:{_LEAK}:ResourceWarning:{_LEAK_MODULE}")
    warnings.filterwarnings("ignore", _LEAK, ResourceWarning, _LEAK_MODULE)


_START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process that can be stopped and started again on its port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
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
             "--appendonly", "no", "--dir", str(self.folder), "--logfile", ""],
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


def _server(folder: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip(
            "no redis-server: run the tests with 'make pytest' (it installs it), "
            "or apt-get install redis-server"
        )
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's Redis."""
    yield from _server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis for this test alone, which it may stop and start."""
    yield from _server(tmp_path_factory.mktemp("own-redis"))


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def durable_env(
    redis_server: RedisServer, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point ``tests.durable.durable_app`` (in this process and its children) at the test's queue.

    Returns the folder the app's tasks write their marks into.
    """
    monkeypatch.setenv("TB_REDIS_URL", redis_server.url)
    monkeypatch.setenv("TB_QUEUE", queue_name)
    monkeypatch.setenv("TB_MARKS", str(tmp_path))
    return tmp_path
