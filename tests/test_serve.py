"""``serve`` end to end through real Hypercorn on 127.0.0.1:0, under a MockClock.

The clock autojumps only after 20 ms of real idleness, so loopback traffic
(sub-millisecond) is never mistaken for idleness, while minutes of task time
still pass at once.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI
from hypercorn.config import Config

from trio_background import BackgroundTasksMiddleware, ShutdownReport, Supervisor, health, serve
from trio_background._serve import ShutdownControl, serve_middleware
from trio_background.fastapi import BackgroundTasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


def app_with(seconds: float, *, own: bool = True, **options: object) -> FastAPI:
    app = FastAPI()
    if own:  # the app's own middleware (else serve() wraps the bare app in one)
        app.add_middleware(BackgroundTasksMiddleware, **options)  # type: ignore[arg-type]

    async def sleeper(s: float) -> None:
        await trio.sleep(s)  # virtual time: this module runs under a MockClock (clock fixture)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sleeper, seconds)
        background_tasks.add_task(sleeper, 1)
        return {"status": "accepted"}

    @app.post("/hold")
    async def hold() -> dict[str, str]:
        await trio.sleep(3600)  # an in-flight request, no task
        return {"status": "done"}

    app.add_route("/healthz", health())
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
        await trio.sleep(stop_after)  # virtual time (the module's MockClock)
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
    assert (report.mode, report.cause) == ("drain", "trigger")
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


async def serve_with_a_request_in_flight(**serve_options: object) -> float:
    """Serve, leave a request in flight, trigger shutdown; return the time it took."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve, app_with(1), loopback_config(), shutdown_trigger=stop.wait, **serve_options
            )  # type: ignore[arg-type]
        )
        async with httpx.AsyncClient(base_url=binds[0]) as client, trio.open_nursery() as inner:

            async def hold() -> None:
                # Hypercorn closes the connection when it cuts the request.
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.post("/hold", timeout=None)

            inner.start_soon(hold)
            await trio.sleep(1)  # virtual time (the module's MockClock)
            started = trio.current_time()
            stop.set()
    return trio.current_time() - started


@pytest.mark.parametrize(
    ("options", "cut_at"), [({"mode": "cancel"}, 1.0), ({"drain_timeout": 10}, 11.0)]
)
async def test_in_flight_requests_are_cut_one_second_after_the_batch_deadline(
    clock: trio.testing.MockClock, options: dict[str, object], cut_at: float
) -> None:
    # Hypercorn's graceful_timeout (3 s in the config) is replaced by exactly
    # the time to the batch deadline plus one second, in both modes.
    took = await serve_with_a_request_in_flight(**options)
    assert cut_at <= took < cut_at + 0.5


async def test_max_requests_shutdown_drains_by_the_deadline(clock: trio.testing.MockClock) -> None:
    # Hypercorn stops by itself after max_requests: the same shutdown runs.
    config = loopback_config()
    config.max_requests = 0  # the first request makes it stop
    reports: list[ShutdownReport] = []

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        reports.append(
            await serve(app_with(3600), config, drain_timeout=10, task_status=task_status)
        )

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.post("/work")).status_code == 200
        started = trio.current_time()
    took = trio.current_time() - started
    (report,) = reports
    assert (report.mode, report.drain_timeout, report.cause) == ("drain", 10, "max_requests")
    assert (report.count("cancelled"), report.count("skipped")) == (1, 1)
    assert 10 <= took < 11


async def test_cancelled_serve_drains_reports_and_reraises(clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(drain_timeout=10)
    app = app_with(3600, supervisor=supervisor)
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, loopback_config()))
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                assert (await client.post("/work")).status_code == 200
            started = trio.current_time()
            outer.cancel()
    assert outer.cancelled_caught  # serve() re-raised the cancellation
    assert 10 <= trio.current_time() - started < 11
    report = supervisor.close()  # made and logged before the re-raise
    assert (report.mode, report.count("cancelled"), report.count("skipped")) == ("drain", 1, 1)
    assert report.cause == "cancellation"


async def test_shutdown_delay_keeps_accepting_while_health_says_503(
    clock: trio.testing.MockClock,
) -> None:
    stop = trio.Event()
    reports: list[ShutdownReport] = []

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        reports.append(
            await serve(
                app_with(3600),
                loopback_config(),
                drain_timeout=10,
                shutdown_delay=5,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.get("/healthz")).status_code == 200
        started = trio.current_time()
        stop.set()
        await trio.sleep(4)  # virtual time (the module's MockClock): inside the delay
        # A new connection during the delay is accepted and answered.
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            response = await client.get("/healthz")
            assert response.status_code == 503
            assert response.json()["status"] == "shutting down"
            assert (await client.post("/work")).status_code == 200
        await trio.sleep(2)  # virtual time (the module's MockClock): past the delay
        with pytest.raises(httpx.ConnectError):  # the delay is over: not accepting
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                await client.get("/healthz")
    # The deadline counts from the end of the delay (5 s), not from the trigger.
    assert 15 <= trio.current_time() - started < 16
    (report,) = reports
    assert (report.count("cancelled"), report.count("skipped")) == (1, 1)


async def test_serve_rejects_a_bad_shutdown_delay() -> None:
    with pytest.raises(
        ValueError, match=r"^shutdown_delay must be a finite number of seconds >= 0, got -1$"
    ):
        await serve(app_with(1), shutdown_delay=-1)


class RecordingBackend:
    """A durable backend that stores nothing and records its life."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def is_durable(self, func: object) -> bool:
        return False

    async def open(self) -> None:
        self.calls.append("open")

    async def aclose(self) -> None:
        self.calls.append("aclose")

    async def hand_off(self, tasks: object) -> list[str]:
        raise AssertionError("nothing is durable")


async def test_serve_hands_the_backend_to_its_middleware(clock: trio.testing.MockClock) -> None:
    backend = RecordingBackend()
    report, _ = await serve_one_request(app_with(0, own=False), backend=backend)
    assert report.all_completed
    assert backend.calls == ["open", "aclose"]


async def test_serve_backend_needs_an_unwrapped_app() -> None:
    with pytest.raises(
        TypeError,
        match=r"^backend= needs an app that is not wrapped yet: pass the backend to the "
        r"middleware instead, BackgroundTasksMiddleware\(app, backend=backend\)$",
    ):
        await serve(BackgroundTasksMiddleware(app_with(1)), backend=RecordingBackend())


async def test_freeze_gc_changes_nothing_in_what_shutdown_does(
    clock: trio.testing.MockClock,
) -> None:
    """``freeze_gc`` is a speed option (``make bench`` measures it): the same
    scenario stops the same way, with the same report, with it and without."""
    reports = []
    for freeze_gc in (False, True):
        report, took = await serve_one_request(
            app_with(3600), stop_after=1, mode="cancel", freeze_gc=freeze_gc
        )
        reports.append((report.counts, [(r.name, r.state) for r in report.not_completed], took))
    assert reports[0] == reports[1]
    assert reports[0][0]["cancelled"] == 1


async def test_a_second_signal_after_the_report_leaves_the_server_stopping_cleanly(
    clock: trio.testing.MockClock,
) -> None:
    """The escalation reaches a server whose report is made (what a --workers worker sees)."""
    reported = trio.Event()
    escalated = trio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # The supervisor made its report when lifespan.shutdown arrived.
        reported.set()
        await escalated.wait()

    app = FastAPI(lifespan=lifespan)
    middleware = BackgroundTasksMiddleware(app)
    control = ShutdownControl(middleware, "drain", 30, 0.0)

    async def watch(control: ShutdownControl) -> None:
        control.request("trigger")
        await reported.wait()
        control.escalate()  # the second signal, late
        escalated.set()
        await trio.sleep_forever()

    report = await serve_middleware(middleware, loopback_config(), control, watch)
    assert escalated.is_set()
    assert (report.mode, report.cause, report.total) == ("drain", "trigger", 0)
