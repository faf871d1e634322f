"""Task policies, handles, cleanups and app-level tasks, through Hypercorn and the client.

Time-dependent ones run under ``autojump_clock``: a retry schedule gives the
same report byte for byte, run after run.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import trio_background
from trio_background import (
    BackgroundTask,
    BackgroundTasksMiddleware,
    TaskState,
    current_supervisor,
    from_scope,
)
from trio_background.testing import open_client

from .conftest import serving


def app_adding(*adds: tuple[str, Any], **options: Any) -> Starlette:
    """An app whose ``POST /`` adds the given (how, func) tasks and answers their ids."""
    handles: list[BackgroundTask] = []

    async def endpoint(request: Request) -> JSONResponse:
        batch = from_scope(request.scope)
        ids = []
        for how, func in adds:
            task = getattr(batch, how)(func)
            handles.append(task)
            ids.append(task.id)
        return JSONResponse(ids)

    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])],
        middleware=[Middleware(BackgroundTasksMiddleware, **options)],
    )
    app.state.handles = handles
    return app


# -- policies -----------------------------------------------------------------


async def test_retries_follow_the_backoff_schedule(autojump_clock: trio.testing.MockClock) -> None:
    """Under MockClock the same scenario gives the same report, byte for byte."""

    async def run_once() -> str:
        calls: list[float] = []

        @trio_background.task(retries=3, backoff=2, max_backoff=5, retry_on=ConnectionError)
        async def flaky() -> None:
            calls.append(trio.current_time())
            if len(calls) < 4:
                raise ConnectionError(f"attempt {len(calls)}")

        start = trio.current_time()
        async with open_client(app_adding(("add_task", flaky))) as client:
            await client.post("/")
            report = await client.shutdown()
        # Attempts at 0, then after 2, 4 and min(8, 5) seconds.
        assert [round(t - calls[0], 6) for t in calls] == [0, 2, 6, 11]
        assert calls[0] >= start
        [record] = report.completed
        assert record.attempts == 4
        return report.to_json()

    assert await run_once() == await run_once()


async def test_a_timeout_fails_the_attempt_and_no_retry_starts_after_the_deadline(
    via: str, autojump_clock: trio.testing.MockClock
) -> None:
    attempts: list[float] = []

    @trio_background.task(timeout=3, retries=5, backoff=10)
    async def slow() -> None:
        attempts.append(trio.current_time())
        await trio.sleep(60)

    async with serving(app_adding(("add_task", slow)), via) as served:
        await served.http.post("/")
        await trio.sleep(1)
        report = await served.shutdown(mode="drain", drain_timeout=20)
    # Attempt 1 times out at 3 s, attempt 2 starts at 13 s and times out at 16 s;
    # attempt 3 would start at 26 s, after the deadline (21 s).
    assert len(attempts) == 2
    [record] = report.failed
    assert record.error == "TimeoutError: timed out after 3 s"
    assert record.attempts == 2
    assert record.reason == (
        "no retry was allowed: attempt 3 would start after the shutdown deadline"
    )


async def test_a_sync_task_past_its_timeout_is_abandoned_and_fails(
    via: str, autojump_clock: trio.testing.MockClock
) -> None:
    release = threading.Event()

    @trio_background.task(timeout=2)
    def stuck() -> None:
        release.wait(10)

    async with serving(app_adding(("add_task", stuck)), via) as served:
        await served.http.post("/")
        await served.supervisor.wait_idle()
        release.set()
        report = await served.shutdown()
    [record] = report.failed
    assert record.error == "TimeoutError: timed out after 2 s"


async def test_a_limit_holds_tasks_of_one_function_and_waiting_counts(via: str) -> None:
    running = 0
    most = 0
    gates: list[trio.Event] = []

    @trio_background.task(limit=2)
    async def limited() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        gate = trio.Event()
        gates.append(gate)
        await gate.wait()
        running -= 1

    async with serving(app_adding(("start_soon", limited)), via) as served:
        for _ in range(5):
            await served.http.post("/")
        await trio.testing.wait_all_tasks_blocked()
        assert running == 2  # three wait for a slot
        while len(gates) < 5:
            for gate in gates:
                gate.set()
            await trio.testing.wait_all_tasks_blocked()
        for gate in gates:
            gate.set()
        report = await served.shutdown()
    assert most == 2
    assert report.count("completed") == 5


async def test_a_task_waiting_for_a_slot_at_the_deadline_is_skipped(via: str) -> None:
    @trio_background.task(limit=1)
    async def one_at_a_time() -> None:
        await trio.sleep_forever()

    async with serving(app_adding(("start_soon", one_at_a_time)), via) as served:
        await served.http.post("/")
        await served.http.post("/")
        await trio.testing.wait_all_tasks_blocked()
        report = await served.shutdown(mode="cancel")
    assert report.count("cancelled") == 1
    [skipped] = report.skipped
    assert skipped.reason == "the shutdown deadline passed before it started"
    assert skipped.started_at is None


async def test_a_key_gives_back_the_task_still_pending_or_running(via: str) -> None:
    sent: list[str] = []
    gate = trio.Event()

    @trio_background.task(key=lambda user: f"welcome:{user}")
    async def send_welcome(user: str) -> None:
        await gate.wait()
        sent.append(user)

    async def endpoint(request: Request) -> JSONResponse:
        task = from_scope(request.scope).add_task(send_welcome, request.query_params["user"])
        return JSONResponse(task.id)

    app = Starlette(
        routes=[Route("/signup", endpoint, methods=["POST"])],
        middleware=[Middleware(BackgroundTasksMiddleware)],
    )
    async with serving(app, via) as served:
        first = (await served.http.post("/signup?user=ada")).json()
        again = (await served.http.post("/signup?user=ada")).json()
        other = (await served.http.post("/signup?user=bob")).json()
        gate.set()
        await served.supervisor.wait_idle()
        later = (await served.http.post("/signup?user=ada")).json()
        report = await served.shutdown()
    assert again == first
    assert len({first, other, later}) == 3  # once ended, the key is free again
    assert sorted(sent) == ["ada", "ada", "bob"]
    assert report.total == report.count("completed") == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, r"^task\(timeout=\.\.\.\) must be a finite number of seconds > 0, got 0$"),
        ({"retries": -1}, r"^task\(retries=\.\.\.\) must be an int >= 0, got -1$"),
        ({"limit": 0}, r"^task\(limit=\.\.\.\) must be an int >= 1 or None, got 0$"),
        ({"backoff": 5, "max_backoff": 1}, r"^task\(max_backoff=\.\.\.\) must be >= backoff"),
    ],
)
def test_bad_policy_options_say_what_is_wrong(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trio_background.task(**options)


def test_retry_on_takes_exception_types() -> None:
    with pytest.raises(TypeError, match=r"^task\(retry_on=\.\.\.\) takes exception types"):
        trio_background.task(retry_on=("ValueError",))  # type: ignore[arg-type]


def test_a_decorated_function_stays_callable() -> None:
    @trio_background.task(retries=2)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5


# -- handles ------------------------------------------------------------------


async def test_a_handle_gives_the_result_and_waits(via: str) -> None:
    async def compute() -> int:
        await trio.lowlevel.checkpoint()
        return 42

    def blocking() -> str:
        return "from a thread"

    app = app_adding(("add_task", compute), ("start_soon", blocking))
    async with serving(app, via) as served:
        await served.http.post("/")
        first, second = app.state.handles
        with pytest.raises(RuntimeError, match=r"has no result: it is (pending|running)"):
            _ = first.result
        await first.wait()
        await second.wait()
        assert (first.result, second.result) == (42, "from a thread")
        await served.shutdown()


async def test_cancel_skips_a_pending_task_and_cuts_a_running_one(via: str) -> None:
    started = trio.Event()

    async def long() -> None:
        started.set()
        await trio.sleep_forever()

    async def later() -> None:
        raise AssertionError("cancelled before it started")

    app = app_adding(("add_task", long), ("add_task", later))
    async with serving(app, via) as served:
        ids = (await served.http.post("/")).json()
        await started.wait()
        running, pending = app.state.handles
        assert pending.cancel() is True
        assert served.supervisor.cancel(ids[0]) is True
        await running.wait()
        assert running.cancel() is False  # ended already
        assert served.supervisor.cancel("999.0") is False
        report = await served.shutdown()
    assert [(r.name.rpartition(".")[2], r.state, r.reason) for r in report.not_completed] == [
        ("long", TaskState.CANCELLED, "cancelled by the app"),
        ("later", TaskState.SKIPPED, "cancelled by the app"),
    ]


async def test_wait_never_raises_what_the_task_raised(via: str) -> None:
    async def boom() -> None:
        raise ValueError("no")

    app = app_adding(("add_task", boom))
    async with serving(app, via) as served:
        await served.http.post("/")
        [task] = app.state.handles
        await task.wait()
        assert task.state is TaskState.FAILED
        assert isinstance(task.error, ValueError)
        await served.shutdown()


# -- cleanups -----------------------------------------------------------------


async def test_a_cleanup_runs_when_the_app_raised_and_after_the_rest(via: str) -> None:
    ran: list[str] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        batch = from_scope(request.scope)
        batch.add_cleanup(ran.append, "cleanup")
        batch.add_task(ran.append, "task")
        if request.query_params.get("fail"):
            raise RuntimeError("handler bug")
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(BackgroundTasksMiddleware)]
    )
    # The client re-raises what the app raised once it closes, as a test wants; not here.
    options = {"raise_app_exceptions": False} if via == "client" else {}
    async with serving(app, via, **options) as served:
        await served.http.get("/")
        await served.supervisor.wait_idle()
        assert ran == ["task", "cleanup"]
        ran.clear()
        # Starlette answers 500, then its app call raises: the batch is skipped.
        assert (await served.http.get("/?fail=1")).status_code == 500
        report = await served.shutdown()
    assert ran == ["cleanup"]
    [skipped] = report.skipped
    assert skipped.reason == "the app raised RuntimeError while handling the request"


async def test_a_cleanup_runs_after_a_stop_but_never_after_the_deadline(via: str) -> None:
    ran: list[str] = []

    async def boom() -> None:
        raise ValueError("stop here")

    async def slow() -> None:
        await trio.sleep_forever()

    app = app_adding(
        ("add_task", boom),
        ("add_task", slow),
        ("add_cleanup", lambda: ran.append("cleanup")),
        on_error="stop",
    )
    async with serving(app, via) as served:
        await served.http.post("/")
        await served.supervisor.wait_idle()
        assert ran == ["cleanup"]
        app.state.handles.clear()
        app2 = app_adding(("add_task", slow), ("add_cleanup", lambda: ran.append("late")))
        await served.shutdown()
    async with serving(app2, via) as served:
        await served.http.post("/")
        await trio.testing.wait_all_tasks_blocked()
        report = await served.shutdown(mode="cancel")
    assert ran == ["cleanup"]
    assert [r.state for r in report.not_completed] == [TaskState.CANCELLED, TaskState.SKIPPED]


# -- app-level tasks ------------------------------------------------------------


async def test_app_level_tasks_run_under_the_same_deadline_and_report(via: str) -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await trio.sleep(1)

    async def endpoint(request: Request) -> PlainTextResponse:
        task = current_supervisor().start_soon(ticker)
        return PlainTextResponse(task.id or "")

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(BackgroundTasksMiddleware)]
    )
    async with serving(app, via) as served:
        task_id = (await served.http.get("/")).text
        await trio.testing.wait_all_tasks_blocked()
        live = served.supervisor.task(task_id)
        assert live is not None
        assert (live.request, live.state) == ("app", TaskState.RUNNING)
        report = await served.shutdown(mode="cancel")
    assert ticks
    [record] = report.cancelled
    assert (record.request, record.id) == ("app", task_id)


def test_current_supervisor_outside_an_app_names_the_fix() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"^current_supervisor\(\) found no supervisor"):
            current_supervisor()

    trio.run(main)
