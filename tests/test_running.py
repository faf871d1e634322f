"""DESIGN.md "Running a batch", through the middleware, in process."""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

import pytest
import trio
import trio.testing
from fastapi import FastAPI, HTTPException

from trio_background import (
    BackgroundTask,
    BackgroundTasksMiddleware,
    TaskRecord,
    TaskState,
    from_scope,
)
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_client

from .conftest import Receive, Scope, Send, send_text

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def make_app(**options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, **options)
    return app


async def test_response_arrives_while_task_runs(autojump_clock: trio.testing.MockClock) -> None:
    app = make_app()
    finished = trio.Event()
    added: list[BackgroundTask] = []

    async def hour_long() -> None:
        await trio.sleep(3600)
        finished.set()

    @app.post("/slow")
    async def slow(background_tasks: BackgroundTasks) -> dict[str, str]:
        added.append(background_tasks.add_task(hour_long))
        return {"ok": "yes"}

    async with open_client(app) as client:
        response = await client.post("/slow")
        assert response.json() == {"ok": "yes"}
        await trio.testing.wait_all_tasks_blocked()
        assert not finished.is_set()
        assert added[0].state is TaskState.RUNNING
        assert trio.current_time() == 0
        await client.wait_idle()
        assert finished.is_set()
        assert trio.current_time() == 3600
        assert added[0].state is TaskState.COMPLETED


async def test_order_of_async_and_sync_tasks_and_threads() -> None:
    app = make_app()
    seen: list[tuple[str, bool]] = []
    main_thread = threading.get_ident()

    async def a(name: str) -> None:
        seen.append((name, threading.get_ident() == main_thread))

    def s(name: str) -> None:
        seen.append((name, threading.get_ident() == main_thread))

    @app.post("/mixed")
    async def mixed(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(a, "a1")
        background_tasks.add_task(s, "s1")
        background_tasks.add_task(a, "a2")
        background_tasks.add_task(s, "s2")

    async with open_client(app) as client:
        await client.post("/mixed")
        await client.wait_idle()
    assert seen == [("a1", True), ("s1", False), ("a2", True), ("s2", False)]


async def test_thread_limiter_holds() -> None:
    app = make_app(thread_limit=2)
    release = threading.Event()
    started_send, started_receive = trio.open_memory_channel[int](10)
    lock = threading.Lock()
    running = 0
    most = 0

    def blocking(n: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        trio.from_thread.run_sync(started_send.send_nowait, n)
        release.wait()
        with lock:
            running -= 1

    @app.post("/block/{n}")
    async def block(n: int, background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(blocking, n)

    async with open_client(app) as client:
        for n in range(5):
            await client.post(f"/block/{n}")
        await started_receive.receive()
        await started_receive.receive()
        await trio.testing.wait_all_tasks_blocked()
        stats = client.supervisor.limiter.statistics()
        assert (stats.borrowed_tokens, stats.tasks_waiting) == (2, 3)
        # The library's own limiter: trio's default one (sync endpoints') is untouched.
        assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
        release.set()
        await client.wait_idle()
        report = await client.shutdown()
    assert most == 2
    assert report.count("completed") == 5


async def test_tasks_see_the_request_context_variables() -> None:
    seen: list[str] = []

    async def in_task() -> None:
        seen.append(request_id.get())

    def in_thread() -> None:
        seen.append(request_id.get())

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        request_id.set(scope["path"])
        batch = from_scope(scope)
        batch.add_task(in_task)
        batch.add_task(in_thread)
        await send_text(send, "ok")

    async with open_client(BackgroundTasksMiddleware(raw)) as client:
        await client.get("/r1")
        await client.get("/r2")
        await client.wait_idle()
    # Both batches may run at once; each task saw its own request's value.
    assert sorted(seen) == ["/r1", "/r1", "/r2", "/r2"]


async def test_task_adding_tasks_extends_the_sequence() -> None:
    app = make_app()
    seen: list[str] = []

    async def first(batch: Any) -> None:
        seen.append("first")
        batch.add_task(third)

    def second() -> None:
        seen.append("second")

    async def third() -> None:
        seen.append("third")

    @app.post("/chain")
    async def chain(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(first, background_tasks)
        background_tasks.add_task(second)

    async with open_client(app) as client:
        await client.post("/chain")
        report = await client.shutdown()
    assert seen == ["first", "second", "third"]
    assert [(r.index, r.name.rsplit(".", 1)[-1]) for r in report.completed] == [
        (0, "first"),
        (1, "second"),
        (2, "third"),
    ]


async def test_failing_task_is_logged_and_the_next_runs(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    seen: list[str] = []

    def explode(x: int) -> None:
        raise ValueError(f"bad {x}")

    async def after() -> None:
        seen.append("after")

    @app.post("/orders/{n}")
    async def order(n: int, background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(explode, n)
        background_tasks.add_task(after)

    with caplog.at_level(logging.ERROR, logger="trio_background"):
        async with open_client(app) as client:
            response = await client.post("/orders/7")
            report = await client.shutdown()
    assert response.status_code == 200
    assert seen == ["after"]
    assert report.count("failed") == 1
    assert report.count("completed") == 1
    (failed,) = report.failed
    assert failed.error == "ValueError: bad 7"
    assert failed.request == "POST /orders/7"
    (log,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert log.name == "trio_background"
    message = log.getMessage()
    assert "explode" in message
    assert "POST /orders/7" in message
    assert log.exc_info is not None
    assert log.exc_info[0] is ValueError


async def test_on_error_stop_skips_the_rest() -> None:
    app = make_app(on_error="stop")

    def explode() -> None:
        raise RuntimeError("down")

    def never() -> None:
        raise AssertionError("must not run")

    @app.post("/x")
    async def x(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(explode)
        background_tasks.add_task(never)

    async with open_client(app) as client:
        await client.post("/x")
        report = await client.shutdown()
    assert (report.count("failed"), report.count("skipped"), report.total) == (1, 1, 2)
    reason = report.skipped[0].reason or ""
    assert reason.startswith("task 1.0 (")
    assert reason.endswith("<locals>.explode) failed and on_error='stop'")


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
async def test_error_hook_receives_record_and_exception(hook_kind: str) -> None:
    received: list[tuple[TaskRecord, BaseException]] = []

    def sync_hook(record: TaskRecord, exc: BaseException) -> None:
        received.append((record, exc))

    async def async_hook(record: TaskRecord, exc: BaseException) -> None:
        await trio.lowlevel.checkpoint()
        received.append((record, exc))

    app = make_app(error_hook=sync_hook if hook_kind == "sync" else async_hook)

    async def explode() -> None:
        raise KeyError("k")

    @app.post("/x")
    async def x(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(explode)

    async with open_client(app) as client:
        await client.post("/x")
        await client.wait_idle()
    ((record, exc),) = received
    assert record.state is TaskState.FAILED
    assert record.error == "KeyError: 'k'"
    assert isinstance(exc, KeyError)


async def test_failing_error_hook_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(record: TaskRecord, exc: BaseException) -> None:
        raise OSError("alerting is down")

    app = make_app(error_hook=hook)
    seen: list[str] = []

    def explode() -> None:
        raise ValueError("v")

    def after() -> None:
        seen.append("after")

    @app.post("/x")
    async def x(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(explode)
        background_tasks.add_task(after)

    with caplog.at_level(logging.ERROR, logger="trio_background"):
        async with open_client(app) as client:
            await client.post("/x")
            report = await client.shutdown()
    assert seen == ["after"]
    assert (report.count("failed"), report.count("completed")) == (1, 1)
    hook_logs = [r for r in caplog.records if "error hook failed" in r.getMessage()]
    assert len(hook_logs) == 1
    assert hook_logs[0].exc_info is not None
    assert hook_logs[0].exc_info[0] is OSError


async def test_sync_function_returning_awaitable_fails_with_a_message() -> None:
    app = make_app()

    async def real_work() -> None:
        raise AssertionError("never awaited by us")

    @app.post("/x")
    async def x(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(lambda: real_work())

    async with open_client(app) as client:
        await client.post("/x")
        report = await client.shutdown()
    (failed,) = report.failed
    assert failed.error is not None
    assert failed.error.startswith("TypeError: background task ")
    assert "x.<locals>.<lambda> is a sync function that returned an awaitable" in failed.error
    assert "pass the async function itself to add_task()" in failed.error


async def test_handler_raising_skips_its_tasks() -> None:
    app = make_app()

    def never() -> None:
        raise AssertionError("must not run")

    @app.post("/boom")
    async def boom(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(never)
        raise ValueError("handler bug")

    @app.post("/missing")
    async def missing(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(never)
        raise HTTPException(status_code=404, detail="no such thing")

    async with open_client(app, raise_app_exceptions=False) as client:
        assert (await client.post("/missing")).status_code == 404
        assert (await client.post("/boom")).status_code == 500
        report = await client.shutdown()
    assert report.count("skipped") == 2
    assert report.total == 2
    reasons = sorted(r.reason or "" for r in report.skipped)
    assert reasons == ["the handler raised HTTPException", "the handler raised ValueError"]
    assert len(client.app_errors) == 1
    assert isinstance(client.app_errors[0], ValueError)


async def test_raw_app_failing_before_response_skips_batch() -> None:
    def never() -> None:
        raise AssertionError("must not run")

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        from_scope(scope).add_task(never)
        if scope["path"] == "/raise":
            raise ValueError("before the response")
        # Start a response and return without its body.
        await send({"type": "http.response.start", "status": 200, "headers": []})

    middleware = BackgroundTasksMiddleware(raw)
    async with open_client(middleware) as client:
        with pytest.raises(ValueError, match=r"^before the response$"):
            await client.get("/raise")
        with pytest.raises(
            RuntimeError, match=r"^the app returned without completing its response$"
        ):
            await client.get("/partial")
        report = await client.shutdown()
    assert [r.reason for r in report.skipped] == [
        "the app raised ValueError while handling the request",
        "the app returned without completing its response",
    ]


async def test_trailers_complete_the_response_only_at_the_end() -> None:
    seen: list[str] = []

    def task() -> None:
        seen.append("ran")

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        from_scope(scope).add_task(task)
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"x"})
        if scope["path"] == "/complete":
            await send({"type": "http.response.trailers", "headers": []})

    # Trailers are an HTTP/2 extension in Hypercorn (and in the client).
    async with open_client(BackgroundTasksMiddleware(raw), http_version="2") as client:
        await client.get("/complete")
        with pytest.raises(
            RuntimeError, match=r"^the app returned without completing its response$"
        ):
            await client.get("/no-trailers")
        report = await client.shutdown()
    assert seen == ["ran"]
    assert (report.count("completed"), report.count("skipped")) == (1, 1)


async def test_request_that_adds_no_task_makes_no_batch() -> None:
    ids: list[str | None] = []

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/with-task":
            ids.append(from_scope(scope).add_task(lambda: None).id)
        await send_text(send, "ok")

    async with open_client(BackgroundTasksMiddleware(raw)) as client:
        for _ in range(3):
            await client.get("/plain")
        await client.get("/with-task")
        report = await client.shutdown()
    # Batch numbers are taken when a batch is made: the plain requests made none.
    assert ids == ["1.0"]
    assert report.total == 1
