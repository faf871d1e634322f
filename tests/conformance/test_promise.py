"""The promise in the paths nobody had listed (issue 23, items 1-7 and 9-11).

Each test runs through real Hypercorn and through the in-process client, and
each failed on the core before the one-runner rewrite (commit c9a1a0b): the
failure is named in its docstring.
"""

from __future__ import annotations

import gc
import logging
import sys
import weakref
from typing import TYPE_CHECKING, Any

import pytest
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from trio_background import (
    BackgroundTasks,
    BackgroundTasksMiddleware,
    TaskObserver,
    TaskRecord,
    from_scope,
)

from .conftest import serving

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Iterator, MutableMapping, Sequence

    from trio_background import BackgroundTask


class Held:
    """A handler held in flight until the test lets it go."""

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.release = trio.Event()

    async def hold(self) -> None:
        self.arrived.set()
        await self.release.wait()


async def test_a_start_soon_task_of_a_request_in_flight_at_the_deadline_is_skipped(
    via: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 1. Before: the task ran after the deadline, was recorded
    ``cancelled`` with an overrun, and a WARNING accused it of shielding."""
    held = Held()
    effects: list[str] = []

    async def effect() -> None:
        effects.append("ran")

    async def endpoint(request: Request) -> PlainTextResponse:
        from_scope(request.scope).start_soon(effect)
        await held.hold()
        return PlainTextResponse("late")

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(BackgroundTasksMiddleware)]
    )
    async with serving(app, via) as served, trio.open_nursery() as nursery:
        nursery.start_soon(served.http.get, "/")
        await held.arrived.wait()
        served.supervisor.begin_shutdown(mode="cancel")
        held.release.set()
        report = await served.shutdown()
    assert effects == []
    [skipped] = report.skipped
    assert skipped.reason == "the shutdown deadline passed before it started"
    assert skipped.started_at is None
    assert skipped.overrun is None
    assert report.total == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "overrun" in r.msg]
    assert not [r for r in caplog.records if "after the shutdown deadline" in r.getMessage()]


async def test_after_a_failure_under_stop_no_task_of_any_kind_starts(via: str) -> None:
    """Item 2. Before: a ``start_soon`` task added after the failure still ran
    while an ``add_task`` added at the same moment was skipped."""
    failed = trio.Event()
    adding = trio.Event()
    ran: list[str] = []

    async def boom() -> None:
        await adding.wait()
        raise ValueError("first")

    async def adder(batch: BackgroundTasks) -> None:
        adding.set()
        await failed.wait()
        batch.start_soon(ran.append, "soon")
        batch.add_task(ran.append, "sequence")

    def hook(record: TaskRecord, exc: BaseException) -> None:
        failed.set()

    async def endpoint(request: Request) -> PlainTextResponse:
        batch = from_scope(request.scope)
        batch.start_soon(adder, batch)
        batch.add_task(boom)
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(BackgroundTasksMiddleware, on_error="stop", error_hook=hook)],
    )
    async with serving(app, via) as served:
        assert (await served.http.get("/")).status_code == 200
        report = await served.shutdown()
    assert ran == []
    assert report.count("failed") == 1
    assert report.count("completed") == 1  # the adder itself
    reasons = {r.reason for r in report.skipped}
    assert report.count("skipped") == 2
    assert reasons == {
        "task 1.1 (test_after_a_failure_under_stop_no_task_of_any_kind_starts."
        "<locals>.boom) failed and on_error='stop'"
    }


async def test_two_middlewares_around_one_app_fail_at_startup_naming_both(via: str) -> None:
    """Item 3. Before: the outer's supervisor was replaced by the inner's at
    lifespan: its 1 s deadline became 30 s and its observer never fired."""

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(BackgroundTasksMiddleware, on_error="stop")],
    )
    outer = BackgroundTasksMiddleware(inner, drain_timeout=1)
    with pytest.raises(BaseException) as info:  # noqa: PT011 - the message is checked below
        async with serving(outer, via):
            pass  # pragma: no cover - startup fails
    messages = set(_leaves(info.value))
    assert (
        "two BackgroundTasksMiddleware around the same app: BackgroundTasksMiddleware("
        "mode='drain', drain_timeout=1, on_error='continue') around Starlette, and inside it "
        "BackgroundTasksMiddleware(mode='drain', drain_timeout=30, on_error='stop') around "
        "ExceptionMiddleware; middlewares never merge: keep one (the app's "
        "app.add_middleware(...) or the wrapper), with the options you want"
    ) in "\n".join(messages)


def _leaves(exc: BaseException) -> Iterator[str]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield str(exc)


class Seen(TaskObserver):
    def __init__(self) -> None:
        self.requests: list[str] = []

    def task_ended(self, task: BackgroundTask, record: TaskRecord) -> None:
        self.requests.append(record.request)


class Storing:
    """A durable backend that stores in memory (the protocol is this library's own)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def is_durable(self, func: object) -> bool:
        return func is durable_job

    async def open(self) -> None:
        self.calls.append("open")

    async def aclose(self) -> None:
        self.calls.append("aclose")

    async def hand_off(self, tasks: Sequence[BackgroundTask]) -> list[str]:
        self.calls.append(f"hand_off {len(tasks)}")
        return [f"engine-{i}" for i, _ in enumerate(tasks)]


def durable_job() -> None:
    raise AssertionError("handed off: never run in process")


async def noop() -> None:
    pass


def mounted_app(observer: Seen, backend: Storing) -> Starlette:
    async def main_endpoint(request: Request) -> PlainTextResponse:
        from_scope(request.scope).add_task(noop)
        return PlainTextResponse("main")

    async def sub_endpoint(request: Request) -> PlainTextResponse:
        batch = from_scope(request.scope)
        batch.add_task(noop)
        batch.add_task(durable_job)
        return PlainTextResponse("sub")

    sub = Starlette(
        routes=[Route("/", sub_endpoint)],
        middleware=[Middleware(BackgroundTasksMiddleware, observers=[observer], backend=backend)],
    )
    return Starlette(
        routes=[Route("/", main_endpoint), Mount("/sub", sub)],
        middleware=[Middleware(BackgroundTasksMiddleware)],
    )


async def test_a_mounted_apps_observer_and_backend_are_its_own(via: str) -> None:
    """Items 4 and 5. Before: the sub-app's observer joined the whole app's
    supervisor on its first request and then saw every request; its backend
    was never opened (no lifespan reaches a mount), so every durable request
    got a 503."""
    observer = Seen()
    backend = Storing()
    async with serving(mounted_app(observer, backend), via) as served:
        assert (await served.http.get("/sub/")).status_code == 200
        assert (await served.http.get("/")).status_code == 200
        assert (await served.http.get("/sub/")).status_code == 200
        report = await served.shutdown()
    assert observer.requests == ["GET /sub/"] * 4  # two tasks a request, only the sub-app's
    assert (report.count("completed"), report.count("handed_off")) == (3, 2)
    assert backend.calls == ["open", "hand_off 1", "hand_off 1", "aclose"]


async def test_a_supervisor_shut_down_with_a_request_in_its_handler_counts_its_task(
    via: str,
) -> None:
    """Item 6. Before: the report froze with 0 tasks; the request's task then
    ran and was in no report."""
    held = Held()
    ran: list[str] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        await held.hold()
        from_scope(request.scope).add_task(ran.append, "late")
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(BackgroundTasksMiddleware)]
    )
    reports: list[Any] = []
    async with serving(app, via) as served, trio.open_nursery() as nursery:
        nursery.start_soon(served.http.get, "/")
        await held.arrived.wait()

        async def shut() -> None:
            reports.append(await served.supervisor.shutdown(mode="cancel"))

        nursery.start_soon(shut)
        await trio.testing.wait_all_tasks_blocked()
        assert reports == []  # the report waits for the request in its handler
        held.release.set()
    [report] = reports
    assert ran == []
    assert report.total == 1
    [skipped] = report.skipped
    assert skipped.reason == "the shutdown deadline passed before it started"


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


async def test_an_exception_whose_str_raises_is_recorded(
    via: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 7. Before: the error escaped the middleware as an ExceptionGroup,
    the failed task was missing from the counts (1 total for 2 tasks) and the
    next task was "skipped: the batch was cancelled before it started"."""
    ran: list[str] = []

    async def bad() -> None:
        raise BadStr

    async def endpoint(request: Request) -> PlainTextResponse:
        batch = from_scope(request.scope)
        batch.add_task(bad)
        batch.add_task(ran.append, "next")
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(BackgroundTasksMiddleware)]
    )
    async with serving(app, via) as served:
        assert (await served.http.get("/")).status_code == 200
        assert (await served.http.get("/")).status_code == 200  # the server serves on
        report = await served.shutdown()
    assert ran == ["next", "next"]
    assert (report.total, report.count("failed"), report.count("completed")) == (4, 2, 2)
    assert {r.error for r in report.failed} == {"BadStr: <exception str() failed>"}
    assert len([r for r in caplog.records if r.name == "trio_background" and r.exc_info]) == 2


async def test_a_response_sent_from_an_except_block_is_a_normal_response(via: str) -> None:
    """Item 9. Before: the tasks were skipped ("the app raised KeyError and an
    exception handler sent the response"): guessed from ``sys.exc_info()``."""
    ran: list[str] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        from_scope(scope).add_task(ran.append, "ran")
        try:
            {}["missing"]
        except KeyError:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"default"})

    async with serving(BackgroundTasksMiddleware(app), via) as served:
        assert (await served.http.get("/")).text == "default"
        report = await served.shutdown()
    assert ran == ["ran"]
    assert report.count("completed") == report.total == 1


async def test_await_tasks_runs_a_task_that_an_earlier_task_added() -> None:
    """Item 10. Before: a task added by a ``start_soon`` task was dropped with
    the false reason "an earlier task of the batch raised"."""
    ran: list[str] = []
    batch = BackgroundTasks()

    async def first() -> None:
        ran.append("first")
        batch.add_task(ran.append, "added")

    batch.start_soon(first)
    await batch()
    assert ran == ["first", "added"]
    assert [(t.state.value, t.reason) for t in batch.tasks] == [("completed", None)] * 2


async def test_a_task_a_handler_starts_elsewhere_keeps_no_request_alive(via: str) -> None:
    """Item 11. Before: the adoption context variable kept the request's
    exchange, batch and tasks (with tracebacks) alive in any task a handler
    started elsewhere: 1,000 of 1,000 kept after their batches ended."""
    batches: list[weakref.ReferenceType[BackgroundTasks]] = []
    keep_running = trio.Event()

    async def lingering() -> None:
        await keep_running.wait()

    async def endpoint(request: Request) -> PlainTextResponse:
        batch = from_scope(request.scope)
        batch.add_task(noop)
        batches.append(weakref.ref(batch))
        request.app.state.nursery.start_soon(lingering)  # copies the request's context
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(BackgroundTasksMiddleware)]
    )
    async with trio.open_nursery() as nursery:
        app.state.nursery = nursery
        async with serving(app, via) as served:
            for _ in range(20):
                assert (await served.http.get("/")).status_code == 200
            await served.supervisor.wait_idle()
            gc.collect()
            assert [ref() for ref in batches] == [None] * 20
            await served.shutdown()
        keep_running.set()
