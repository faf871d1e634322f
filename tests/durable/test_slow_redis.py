"""The response and the outcome agree under a slow Redis, and opening is bounded.

The web process talks to a real redis-server through :class:`SlowProxy`,
which holds Redis's replies back; the test reads the queue directly. A 503
must mean that no task of the request will ever run, a 2xx that every one
is stored (shared/DESIGN.md, "Durable hand-off").
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    pytest.skip("streaQ (the durable backend) needs Python 3.11+", allow_module_level=True)

import httpx
import trio
from streaq import TaskStatus

from tests.durable import durable_app
from tests.durable.slow_redis import SlowProxy, silent
from tests.durable.test_hand_off import order_app, queued
from tests.redis_fixture import RedisServer
from trio_background import BackgroundTask, TaskState
from trio_background.streaq import StreaqBackend
from trio_background.testing import open_live_server


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[SlowProxy]:
    proxy = SlowProxy(redis_server.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        yield proxy
        nursery.cancel_scope.cancel()


def slow_backend(proxy: SlowProxy) -> StreaqBackend:
    backend = durable_app.make_backend()
    slow = StreaqBackend(proxy.url, queue_name=backend.queue_name, hand_off_timeout=1.0)
    for durable in backend.functions:
        slow.task(name=durable.name)(durable.func)
    return slow


async def test_a_late_answer_gets_503_and_the_task_is_withdrawn(
    proxy: SlowProxy, durable_env: Path
) -> None:
    added: list[BackgroundTask] = []
    async with durable_app.make_backend() as direct:
        async with open_live_server(order_app(slow_backend(proxy), added)) as server:
            proxy.delay = 3.0  # Redis stores the tasks at once, says so 3 s later
            async with httpx.AsyncClient(base_url=server.url) as http:
                response = await http.post("/orders/1")
            assert response.status_code == 503
            proxy.delay = 0.0
            report = await server.shutdown()
        # The write reached Redis, and was taken back: nothing will run.
        assert await queued(direct) == 0
    assert [t.state for t in added] == [TaskState.SKIPPED, TaskState.SKIPPED]
    assert (report.count("skipped"), report.count("handed_off")) == (2, 0)


async def test_a_confirmed_write_gets_2xx_and_the_task_is_queued(
    proxy: SlowProxy, durable_env: Path
) -> None:
    added: list[BackgroundTask] = []
    async with durable_app.make_backend() as direct:
        async with open_live_server(order_app(slow_backend(proxy), added)) as server:
            # The write is confirmed within the timeout; the release may
            # not be: the tasks are stored all the same.
            proxy.delay = 0.6
            async with httpx.AsyncClient(base_url=server.url) as http:
                response = await http.post("/orders/2")
            assert response.status_code == 200
            proxy.delay = 0.0
            report = await server.shutdown()
        durable, _local = added
        assert durable.state is TaskState.HANDED_OFF
        assert durable.engine_id is not None
        assert await direct.status(durable.engine_id) is TaskStatus.QUEUED
    assert report.count("handed_off") == 1


async def test_open_is_bounded_by_the_hand_off_timeout() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(silent)
        backend = StreaqBackend(f"redis://127.0.0.1:{port}/0", hand_off_timeout=0.5)
        with trio.fail_after(10):  # the exit bound: before the fix it waited forever
            with pytest.raises(
                ConnectionError,
                match=r"^cannot connect to Redis at redis://127\.0\.0\.1:\d+/0 for .*: no answer "
                r"within hand_off_timeout \(0\.5s\)$",
            ):
                await backend.open()
        nursery.cancel_scope.cancel()
