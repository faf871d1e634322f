"""start_soon tasks run beside the sequence, in the request's nursery, under real Hypercorn too."""

from __future__ import annotations

import trio
import trio.testing
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

from .conftest import serving


async def test_two_start_soon_tasks_overlap_while_the_sequence_keeps_its_order(via: str) -> None:
    events: list[str] = []
    a_started = trio.Event()
    b_started = trio.Event()

    async def a() -> None:
        a_started.set()
        await b_started.wait()  # finishes only if b runs at the same time
        events.append("a")

    async def b() -> None:
        b_started.set()
        await a_started.wait()
        events.append("b")

    async def step(name: str) -> None:
        events.append(name)

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(step, "first")
        background_tasks.start_soon(a)
        background_tasks.start_soon(b)
        background_tasks.add_task(step, "second")

    async with serving(app, via) as served:
        assert (await served.http.post("/go")).status_code == 200
        report = await served.shutdown()
    assert sorted(events) == ["a", "b", "first", "second"]
    assert events.index("first") < events.index("second")
    assert report.count("completed") == 4
    assert [r.index for r in report.completed] == [0, 1, 2, 3]


async def test_shutdown_cuts_start_soon_and_sequence_tasks_by_one_deadline(via: str) -> None:
    started = trio.Event()

    async def forever() -> None:
        started.set()
        await trio.sleep_forever()

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks) -> None:
        background_tasks.start_soon(forever)
        background_tasks.add_task(forever)
        background_tasks.add_task(forever)

    async with serving(app, via) as served:
        await served.http.post("/go")
        await started.wait()
        await trio.testing.wait_all_tasks_blocked()
        report = await served.shutdown(mode="cancel")
    assert report.count("cancelled") == 2
    assert report.count("skipped") == 1
    assert report.total == 3
