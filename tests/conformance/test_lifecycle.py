"""The supervisor owns a batch from its first task; options follow the app that set them."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import TYPE_CHECKING, Annotated

import pytest
import trio
import trio.testing
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.routing import Mount

from trio_background import BackgroundTasksMiddleware, TaskRecord, TaskState
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_client

from .conftest import serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


def fail() -> None:
    raise ValueError("boom")


def sub_app(on_error: str, hooked: list[str]) -> FastAPI:
    app = FastAPI()

    def hook(record: TaskRecord, exc: BaseException) -> None:
        hooked.append(record.request)

    app.add_middleware(BackgroundTasksMiddleware, on_error=on_error, error_hook=hook)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(fail)
        background_tasks.add_task(len, "after")

    return app


async def test_mounted_apps_keep_their_own_options(via: str) -> None:
    """Starlette passes no lifespan to mounts: the options still apply, per app."""
    stop_hooked: list[str] = []
    go_on_hooked: list[str] = []
    outer = Starlette(
        routes=[
            Mount("/stop", sub_app("stop", stop_hooked)),
            Mount("/continue", sub_app("continue", go_on_hooked)),
        ]
    )
    async with serving(outer, via) as served:
        assert (await served.http.post("/stop/work")).status_code == 200
        assert (await served.http.post("/continue/work")).status_code == 200
        report = await served.shutdown()
    assert stop_hooked == ["POST /stop/work"]
    assert go_on_hooked == ["POST /continue/work"]
    assert report.count("failed") == 2
    [skipped] = report.skipped
    assert skipped.request == "POST /stop/work"
    assert skipped.reason == "task 1.0 (fail) failed and on_error='stop'"
    assert report.count("completed") == 1


async def test_options_apply_without_a_lifespan() -> None:
    hooked: list[str] = []
    async with open_client(sub_app("stop", hooked), lifespan=False) as client:
        await client.post("/work")
        report = await client.shutdown()
    assert hooked == ["POST /work"]
    assert report.count("skipped") == 1


async def test_a_batch_opened_before_shutdown_and_started_after_it_is_reported(via: str) -> None:
    handling = trio.Event()
    answer = trio.Event()
    ran: list[str] = []
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    async def work() -> None:
        ran.append("work")

    @app.post("/slow")
    async def slow(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(work)
        handling.set()
        await answer.wait()

    async with serving(app, via) as served:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.http.post, "/slow")
            await handling.wait()
            # The batch is known now, before its response.
            assert served.supervisor.statistics().batches_running == 1
            assert served.supervisor.task("1.0") is not None
            reports: list[object] = []

            async def shut() -> None:
                reports.append(await served.shutdown(drain_timeout=30))

            nursery.start_soon(shut)
            await trio.testing.wait_all_tasks_blocked()
            assert served.supervisor.shutting_down
            answer.set()
    [report] = reports
    assert ran == ["work"]
    [record] = report.completed  # type: ignore[attr-defined]
    assert record.started_at >= report.shutdown_started_at  # type: ignore[attr-defined]
    assert report.total == 1  # type: ignore[attr-defined]


async def test_a_task_id_is_found_while_the_handler_dependencies_tear_down(via: str) -> None:
    added: list[str] = []
    tearing_down = trio.Event()
    release = trio.Event()
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    async def slow_teardown() -> AsyncIterator[None]:
        yield
        tearing_down.set()
        await release.wait()

    @app.post("/work")
    async def work(
        background_tasks: BackgroundTasks,
        # A default, not Annotated: the annotation is a string here, and
        # slow_teardown is local to the test.
        _: None = Depends(slow_teardown, scope="function"),
    ) -> None:
        task = background_tasks.add_task(len, "x")
        assert task.id is not None
        added.append(task.id)

    async with serving(app, via) as served:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.http.post, "/work")
            await tearing_down.wait()
            [task_id] = added
            record = served.supervisor.task(task_id)
            assert record is not None
            assert record.state is TaskState.PENDING
            release.set()
        report = await served.shutdown()
    assert report.count("completed") == 1


class Big:
    """A stand-in for a 100 MB argument, watched through a weak reference."""

    def __init__(self) -> None:
        self.data = bytearray(100 * 1024 * 1024)


async def test_a_task_lets_go_of_its_arguments_when_it_ends(via: str) -> None:
    seen: list[bool] = []
    refs: list[weakref.ref[Big]] = []

    def use(big: Big) -> None:
        assert len(big.data) == 100 * 1024 * 1024

    async def check() -> None:
        gc.collect()
        seen.append(refs[0]() is None)

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/big")
    async def big(background_tasks: BackgroundTasks) -> None:
        argument = Big()
        refs.append(weakref.ref(argument))
        background_tasks.add_task(use, argument)
        background_tasks.add_task(check)

    async with serving(app, via) as served:
        await served.http.post("/big")
        report = await served.shutdown()
    assert seen == [True]  # freed while the batch's next task ran
    assert report.count("completed") == 2


async def test_records_kept_during_a_drain_stay_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task that re-adds itself for the whole drain: counts exact, records bounded."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, keep_records=10)

    @app.post("/forever")
    async def forever(background_tasks: BackgroundTasks) -> None:
        async def again() -> None:
            await trio.sleep(1 / 64)  # exact in binary: the counts are too
            background_tasks.add_task(again)

        background_tasks.add_task(again)

    async with open_client(app) as client:
        await client.post("/forever")
        report = await client.shutdown(drain_timeout=2.01)
    assert report.count("completed") == 128
    assert report.count("cancelled") == 1
    assert len(report.completed) == 10
    assert len(report.cancelled) == 1


async def test_a_sync_task_doing_real_work_ends_as_in_production(
    via: str, request: pytest.FixtureRequest
) -> None:
    """Under autojump, a thread's real time counts: the drain deadline abandons it."""
    if via == "client":
        # The in-process client runs under the test's MockClock, as a test would.
        request.getfixturevalue("autojump_clock")
    working = threading.Event()
    release = threading.Event()

    def real_work() -> None:
        working.set()
        release.wait(30)  # work that takes longer than the drain allows

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(real_work)

    try:
        async with serving(app, via) as served:
            await served.http.post("/work")
            await trio.to_thread.run_sync(working.wait)
            report = await served.shutdown(drain_timeout=0.3)
    finally:
        release.set()
    [abandoned] = report.abandoned
    assert abandoned.name.endswith("real_work")
    assert report.total == 1


async def held_open() -> AsyncIterator[dict[str, bool]]:
    """A yield dependency: open until the request's batch has ended."""
    resource = {"open": True}
    yield resource
    resource["open"] = False


async def test_a_pending_batch_keeps_fastapis_request_objects_only_for_yield_dependencies(
    via: str,
) -> None:
    """Without a yield dependency to keep open, FastAPI's request is gone before the batch runs."""
    freed: dict[str, bool] = {}

    def watch(name: str, ref: weakref.ref[Request]) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            gc.collect()
            freed[name] = ref() is None

        return check

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/plain")
    async def plain(request: Request, background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(watch("plain", weakref.ref(request)))

    @app.post("/yield")
    async def with_yield(
        request: Request,
        background_tasks: BackgroundTasks,
        resource: Annotated[dict[str, bool], Depends(held_open)],
    ) -> None:
        async def still_open() -> None:
            freed["yield dependency closed"] = not resource["open"]

        background_tasks.add_task(watch("yield", weakref.ref(request)))
        background_tasks.add_task(still_open)

    async with serving(app, via) as served:
        for path in ("/plain", "/yield"):
            assert (await served.http.post(path)).status_code == 200
        report = await served.shutdown()
    assert report.all_completed
    # FastAPI's frames (and the Request they hold) are gone while the batch runs...
    assert freed["plain"] is True
    # ...but kept by design while a yield dependency must stay open for the tasks.
    assert freed["yield"] is False
    assert freed["yield dependency closed"] is False
