"""Nothing a task raises reaches the server; what the deadline meets is recorded as it was."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, TaskRecord, TaskState
from trio_background.fastapi import BackgroundTasks

from .conftest import serving

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Callable


def raise_system_exit() -> None:
    raise SystemExit(3)


async def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


async def raise_generator_exit() -> None:
    raise GeneratorExit


async def raise_a_group() -> None:
    raise BaseExceptionGroup("two", [ValueError("one"), SystemExit(2)])


@pytest.mark.parametrize(
    ("func", "error"),
    [
        (raise_system_exit, "SystemExit: 3"),
        (raise_keyboard_interrupt, "KeyboardInterrupt"),
        (raise_generator_exit, "GeneratorExit"),
        (raise_a_group, "BaseExceptionGroup: two (2 sub-exceptions)"),
    ],
)
async def test_a_task_raising_a_base_exception_fails_and_the_server_goes_on(
    via: str,
    func: Callable[[], object],
    error: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooked: list[tuple[str, str]] = []

    def hook(record: TaskRecord, exc: BaseException) -> None:
        hooked.append((record.name, type(exc).__name__))

    after: list[str] = []
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, error_hook=hook)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(func)
        background_tasks.add_task(after.append, "next task ran")

    async with serving(app, via) as served:
        assert (await served.http.post("/go")).status_code == 200
        await served.supervisor.wait_idle()
        # The server still serves.
        assert (await served.http.post("/go")).status_code == 200
        report = await served.shutdown()
    assert after == ["next task ran", "next task ran"]
    assert report.count("failed") == 2
    assert report.count("completed") == 2
    assert [r.error for r in report.failed] == [error, error]
    assert hooked == [(func.__name__, error.split(":")[0])] * 2
    logged = [r for r in caplog.records if r.name == "trio_background" and r.exc_info]
    assert [r.getMessage() for r in logged] == [
        f"background task {func.__name__} (1.0) failed, for request POST /go",
        f"background task {func.__name__} (2.0) failed, for request POST /go",
    ]


async def test_a_group_that_mixes_an_error_with_the_cancellation_fails_and_stops_the_batch(
    via: str,
) -> None:
    """A task's nursery whose child fails while the deadline cancels it."""
    started = trio.Event()

    async def child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    async def with_a_nursery() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            started.set()
            await trio.sleep_forever()

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(with_a_nursery)
        background_tasks.add_task(trio.sleep, 0)

    async with serving(app, via) as served:
        await served.http.post("/go")
        await started.wait()
        report = await served.shutdown(mode="cancel")
    [failed] = report.failed
    assert failed.name.endswith("with_a_nursery")
    assert failed.error == "ExceptionGroup: Exceptions from Trio nursery (1 sub-exception)"
    [skipped] = report.skipped
    assert skipped.reason == "the shutdown deadline passed before it started"
    assert report.total == 2


async def test_a_task_that_swallows_the_cancellation_is_recorded_with_its_overrun(
    via: str, caplog: pytest.LogCaptureFixture
) -> None:
    started = trio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            return  # swallowed: trio cannot make it stop
        # (a real program would re-raise)

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(stubborn)
        background_tasks.add_task(trio.sleep, 0)

    async with serving(app, via) as served:
        await served.http.post("/go")
        await started.wait()
        report = await served.shutdown(mode="cancel")
    [record] = report.completed
    assert record.state is TaskState.COMPLETED
    assert record.overrun is not None
    assert record.overrun >= 0
    assert record.reason is not None
    assert record.reason.startswith("returned after the shutdown deadline")
    assert report.count("skipped") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("after the shutdown deadline" in message for message in warnings)


async def test_a_shielded_task_that_overruns_is_recorded_with_its_real_end(via: str) -> None:
    started = trio.Event()
    release = trio.Event()

    async def shielded() -> None:
        with trio.CancelScope(shield=True):
            started.set()
            await release.wait()

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(shielded)

    async with serving(app, via) as served:
        await served.http.post("/go")
        await started.wait()
        async with trio.open_nursery() as nursery:
            reports: list[object] = []

            async def shut() -> None:
                reports.append(await served.shutdown(mode="cancel"))

            nursery.start_soon(shut)
            # The deadline (now, in cancel mode) has passed; the task goes on.
            await trio.testing.wait_all_tasks_blocked()
            assert served.supervisor.shutting_down
            assert served.supervisor.time_until_deadline() == 0
            release.set()
    [report] = reports
    [record] = report.completed  # type: ignore[attr-defined]
    assert record.overrun > 0
    assert record.ended_at > report.deadline  # type: ignore[attr-defined]


async def test_tasks_cut_late_because_the_loop_was_busy_did_not_overrun(
    via: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop is busy when the deadline comes (as with 10,000 batches to cut at once)."""
    count = 5
    started = trio.Semaphore(0)

    async def waits() -> None:
        started.release()
        await trio.sleep_forever()

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/wait")
    async def wait(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(waits)

    async with serving(app, via) as served:
        for _ in range(count):
            await served.http.post("/wait")
        for _ in range(count):
            await started.acquire()
        served.supervisor.begin_shutdown(mode="cancel")
        # The feature: the event loop is held past the deadline, before trio
        # gets to deliver the cut (what cutting thousands of batches costs).
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the point
        report = await served.shutdown(mode="cancel")
    assert report.count("cancelled") == count
    for record in report.cancelled:
        assert record.ended_at is not None
        assert report.deadline is not None
        assert record.ended_at - report.deadline >= 0.2  # late indeed
        assert record.overrun is None  # but not through any fault of its own
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not any("after the shutdown deadline" in message for message in warnings)


async def test_a_task_that_waits_in_its_cleanup_overruns(
    via: str, caplog: pytest.LogCaptureFixture
) -> None:
    started = trio.Event()

    async def slow_cleanup() -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.1)  # the feature: cleanup that outlasts the deadline

    quick_started = trio.Event()

    async def quick() -> None:
        quick_started.set()
        await trio.sleep_forever()

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/slow")
    async def slow(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(slow_cleanup)

    @app.post("/quick")
    async def go_quick(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(quick)

    async with serving(app, via) as served:
        await served.http.post("/slow")
        await served.http.post("/quick")
        await started.wait()
        await quick_started.wait()
        report = await served.shutdown(mode="cancel")
    by_name = {record.name.rsplit(".", 1)[-1]: record for record in report.cancelled}
    assert by_name["slow_cleanup"].overrun is not None
    assert by_name["slow_cleanup"].overrun >= 0.1
    assert by_name["quick"].overrun is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("after the shutdown deadline" in message for message in warnings) == 1
