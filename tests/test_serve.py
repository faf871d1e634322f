"""``serve`` end to end through real Hypercorn on 127.0.0.1:0, under a MockClock.

The clock autojumps only after 20 ms of real idleness, so loopback traffic
(sub-millisecond) is never mistaken for idleness, while minutes of task time
still pass at once.
"""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI
from hypercorn.config import Config

from trio_background import BackgroundTasksMiddleware, ShutdownReport, serve
from trio_background.fastapi import BackgroundTasks


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


def app_with(seconds: float, **options: object) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, **options)  # type: ignore[arg-type]

    async def sleeper(s: float) -> None:
        await trio.sleep(s)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sleeper, seconds)
        background_tasks.add_task(sleeper, 1)
        return {"status": "accepted"}

    return app


def loopback_config(graceful_timeout: float = 3) -> Config:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    return config


async def serve_one_request(
    app: object, stop_after: float = 0, **serve_options: object
) -> tuple[ShutdownReport, float]:
    """Serve, post /work once, trigger shutdown; return the report and its time."""
    stop = trio.Event()
    reports: list[ShutdownReport] = []
    config = loopback_config()

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        reports.append(
            await serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
                **serve_options,  # type: ignore[arg-type]
            )
        )

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        assert binds[0].startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            response = await client.post("/work")
        assert response.json() == {"status": "accepted"}
        await trio.sleep(stop_after)
        started = trio.current_time()
        stop.set()
    assert config.graceful_timeout == 3  # serve() copied it
    return reports[0], trio.current_time() - started


async def test_drain_outlasts_hypercorns_graceful_timeout(clock: trio.testing.MockClock) -> None:
    # The batch needs 21 s; Hypercorn alone would cut connections after 3 s.
    report, took = await serve_one_request(app_with(20), drain_timeout=30)
    assert report.all_completed
    assert report.total == 2
    assert 20 <= took < 30


async def test_drain_deadline_cuts_the_batch(clock: trio.testing.MockClock) -> None:
    report, took = await serve_one_request(app_with(3600), drain_timeout=10)
    assert (report.count("cancelled"), report.count("skipped")) == (1, 1)
    assert report.mode == "drain"
    assert 10 <= took < 11


async def test_cancel_mode(clock: trio.testing.MockClock) -> None:
    report, took = await serve_one_request(app_with(3600), stop_after=5, mode="cancel")
    assert (report.count("cancelled"), report.count("skipped")) == (1, 1)
    assert report.cancelled[0].ended_at - (report.cancelled[0].started_at or 0) >= 5
    assert took < 1


async def test_middleware_options_apply_unless_serve_overrides(
    clock: trio.testing.MockClock,
) -> None:
    report, _ = await serve_one_request(app_with(3600, mode="cancel"))
    assert report.mode == "cancel"
    report, _ = await serve_one_request(app_with(3600, mode="cancel"), mode="drain")
    assert (report.mode, report.drain_timeout) == ("drain", 30)


async def test_serve_accepts_a_wrapped_app(clock: trio.testing.MockClock) -> None:
    async def raw(scope: dict[str, object], receive: object, send: object) -> None:
        raise AssertionError("not called")

    middleware = BackgroundTasksMiddleware(raw, mode="cancel")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve, middleware, loopback_config(), shutdown_trigger=stop.wait)
        )
        stop.set()
    assert middleware.supervisor.close().mode == "cancel"


async def test_serve_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match=r"^mode must be 'drain' or 'cancel', got 'soon'$"):
        await serve(app_with(1), mode="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^drain_timeout must be a finite number"):
        await serve(app_with(1), drain_timeout=float("inf"))


async def test_heap_frozen_for_the_collector_during_shutdown_only(
    clock: trio.testing.MockClock,
) -> None:
    import gc

    seen: list[int] = []
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    async def watch() -> None:
        await trio.sleep(3600)

    async def record_gc() -> None:
        seen.append(gc.get_freeze_count())

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(watch)
        background_tasks.add_task(record_gc)
        return {"status": "accepted"}

    assert gc.get_freeze_count() == 0
    report, _ = await serve_one_request(app, drain_timeout=7200)
    assert report.all_completed
    assert seen[0] > 0  # the second task ran during the drain
    assert gc.get_freeze_count() == 0
