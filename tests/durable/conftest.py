"""A real Redis for the durable tests: Debian's ``redis-server`` on a free loopback port.

One server serves the whole session; each test gets its own queue name, so
tests never see each other's tasks. A test that stops Redis takes a server
of its own (``own_redis``). The server itself is :mod:`tests.redis_fixture`.

This file imports nothing of streaQ: on Python < 3.11 (streaQ's floor) the
test modules skip themselves with that reason.
"""

from __future__ import annotations

import gc
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.redis_fixture import RedisServer
from tests.test_cli import Server, start

_LEAK = "Unclosed <MemoryObject"
_LEAK_MODULE = "anyio.streams.memory"


def pytest_configure(config: pytest.Config) -> None:
    # coredis (streaQ's Redis client) makes a connection's AnyIO memory
    # streams before it connects and closes them only once connected: each
    # refused connection (the tests of Redis being down) leaves some for the
    # garbage collector, whose ResourceWarning filterwarnings=error would
    # turn into a failure of whichever test runs then. Nothing of ours uses
    # AnyIO's memory streams.
    # (This covers the tests; _collect_leaks, the streams still in reference
    # cycles when the server that refused them is stopped.)
    config.addinivalue_line("filterwarnings", f"ignore:{_LEAK}:ResourceWarning:{_LEAK_MODULE}")


def _collect_leaks() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _LEAK, ResourceWarning, _LEAK_MODULE)
        gc.collect()


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
        _collect_leaks()


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


Spawn = Callable[..., Awaitable[Server]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn(*python_args)`` starts ``python ARGS`` from the project's root.

    Whatever is still running when the test ends (it failed half-way) is
    killed, so no process outlives its test.
    """
    started: list[Server] = []

    async def spawn(*args: str) -> Server:
        server = await start(*args)
        started.append(server)
        return server

    yield spawn
    for server in started:
        if server.process.returncode is None:
            server.process.kill()
        with trio.CancelScope(shield=True):
            await server.process.wait()
            if server.process.stderr is not None:
                await server.process.stderr.aclose()
