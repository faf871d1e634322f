"""The hand-off through the middleware: FastAPI under real Hypercorn, a real Redis, real workers.

The web side runs in the test (``open_live_server``: real Hypercorn on
``127.0.0.1:0``) or as a whole process, the workers always as processes.
Real time throughout (Redis and processes cannot share a MockClock); every
wait is for an event, under a generous bound.
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
from fastapi import FastAPI
from streaq import TaskStatus

from tests.durable import durable_app
from tests.durable.conftest import Spawn
from tests.durable.test_worker import start_worker, stop
from tests.redis_fixture import RedisServer
from trio_background import BackgroundTask, BackgroundTasksMiddleware, TaskState, monitor
from trio_background import BackgroundTasks as Batch
from trio_background.fastapi import BackgroundTasks
from trio_background.streaq import StreaqBackend
from trio_background.streaq._backend import make_streaq_worker
from trio_background.testing import open_live_server


def order_app(
    backend: StreaqBackend,
    added: list[BackgroundTask],
    *,
    spill: bool = False,
    waiting: trio.Event | None = None,
) -> FastAPI:
    """One durable task and one in-process task per order; ``added`` keeps the tasks.

    ``/long/NAME`` runs a task that adds a durable one to its batch (then
    sets ``waiting``) and never ends.
    """
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, backend=backend, spill=spill)
    app.mount("/admin/tasks", monitor())

    def log_order(number: int) -> None: ...

    @app.post("/orders/{number}")
    async def order(number: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        added.append(background_tasks.add_task(durable_app.mark, f"order-{number}"))
        added.append(background_tasks.add_task(log_order, number))
        return {"order": number}

    async def long_local(batch: Batch, name: str) -> None:
        # Adds a durable task to its own batch, then outlasts the drain
        # deadline: the durable task is still waiting when the deadline comes.
        added.append(batch.add_task(durable_app.mark, name))
        if waiting is not None:
            waiting.set()
        await trio.sleep_forever()

    @app.post("/long/{name}")
    async def long(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        added.append(background_tasks.add_task(long_local, background_tasks, name))
        return {"long": name}

    return app


@pytest.fixture
async def client(durable_env: Path) -> AsyncIterator[StreaqBackend]:
    """The test's own view of the queue (results, status, queue size)."""
    async with durable_app.make_backend() as backend:
        yield backend


async def queued(backend: StreaqBackend) -> int:
    worker = make_streaq_worker(backend)
    async with worker:
        return await worker.queue_size()


async def test_a_durable_task_is_stored_before_the_first_byte_and_a_worker_runs_it(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    added: list[BackgroundTask] = []
    web = durable_app.make_backend()
    async with open_live_server(order_app(web, added)) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            async with http.stream("POST", "/orders/1") as response:
                # The headers are here, the body not read yet: already in Redis.
                assert response.status_code == 200
                durable, local = added
                assert durable.state is TaskState.HANDED_OFF
                assert durable.engine_id is not None
                assert await client.status(durable.engine_id) is TaskStatus.QUEUED
                await response.aread()
            await server.supervisor.wait_idle()
            # The monitor lists it, with streaQ's id.
            snapshot = (await http.get("/admin/tasks/tasks")).json()
            [shown] = [r for r in snapshot["finished"] if r["state"] == "handed_off"]
            assert (shown["id"], shown["engine_id"]) == (durable.id, durable.engine_id)
            one = (await http.get(f"/admin/tasks/tasks/{durable.id}")).json()
            assert (one["state"], one["engine_id"]) == ("handed_off", durable.engine_id)
        report = await server.shutdown()
    assert (local.state, local.engine_id) == (TaskState.COMPLETED, None)
    assert report.count("handed_off") == 1
    assert report.count("completed") == 1
    [record] = report.handed_off
    assert (record.name, record.state, record.engine_id) == (
        "mark",
        TaskState.HANDED_OFF,
        durable.engine_id,
    )
    assert record.started_at is None
    worker = await start_worker(spawn)
    with trio.fail_after(30):
        result = await client.result(durable.engine_id)
    await stop(worker)
    assert result.result == "order-1"
    assert (durable_env / "order-1").read_text() == f"done {worker.process.pid}\n"


async def test_the_task_survives_the_web_process_killed_right_after_the_response(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    web = await spawn(
        "-m", "trio_background", "tests.durable.durable_app:app", "--bind", "127.0.0.1:0"
    )  # fmt: skip
    url = (await web.wait_for(r"Running on (http://127\.0\.0\.1:\d+)")).group(1)
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/mark/survivor")
    web.process.kill()  # no drain, no lifespan shutdown: a crash
    await web.finish()
    assert response.status_code == 200
    assert await queued(client) == 1
    worker = await start_worker(spawn)
    await worker.wait_for(r"task tests\.durable\.durable_app\.mark ■ \w+ ← survivor")
    await stop(worker)
    assert (durable_env / "survivor").read_text() == f"done {worker.process.pid}\n"


async def test_redis_down_answers_503_and_acknowledges_nothing(
    own_redis: RedisServer, durable_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TB_REDIS_URL", own_redis.url)
    added: list[BackgroundTask] = []
    web = durable_app.make_backend()
    async with open_live_server(order_app(web, added)) as server:
        own_redis.stop()
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post("/orders/7")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.text.startswith(
            "503 Service Unavailable: the background work of this request could not be stored"
        )
        assert "order" not in response.text  # the handler's own response never went out
        report = await server.shutdown()
    assert [t.state for t in added] == [TaskState.SKIPPED, TaskState.SKIPPED]
    assert report.count("skipped") == 2
    assert report.count("handed_off") == 0
    assert {r.reason for r in report.skipped} == {
        "the durable backend could not store this request's durable tasks, so the client got 503"
    }
    own_redis.start()  # nothing reached Redis
    async with durable_app.make_backend() as check:
        assert await queued(check) == 0


@pytest.mark.parametrize("spill", [True, False])
async def test_spill_hands_off_the_durable_tasks_not_started_at_the_deadline(
    client: StreaqBackend, spill: bool
) -> None:
    added: list[BackgroundTask] = []
    waiting = trio.Event()
    app = order_app(durable_app.make_backend(), added, spill=spill, waiting=waiting)
    async with open_live_server(app, drain_timeout=0.5) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.post("/long/spilled")).status_code == 200
        with trio.fail_after(30):
            await waiting.wait()
        report = await server.shutdown()
    long_task, durable = added
    assert long_task.state is TaskState.CANCELLED
    if spill:
        assert durable.state is TaskState.HANDED_OFF
        [record] = report.handed_off
        assert record.engine_id == durable.engine_id
        assert report.count("skipped") == 0
        assert durable.engine_id is not None
        assert await client.status(durable.engine_id) is TaskStatus.QUEUED
    else:
        assert durable.state is TaskState.SKIPPED
        assert report.count("handed_off") == 0
        assert await queued(client) == 0
