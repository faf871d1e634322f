"""DESIGN.md "Scopes", installation errors, nesting, and the trio-only rule."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
import trio
import trio.testing
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, Supervisor, from_scope
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_client

from .conftest import Message, Receive, Scope, Send, send_text

INSTALL_HINT = re.escape(
    "this request has no background tasks batch: BackgroundTasksMiddleware is not installed. "
    "Add it with app.add_middleware(BackgroundTasksMiddleware) (Starlette, FastAPI), or wrap "
    "the ASGI app: app = BackgroundTasksMiddleware(app)"
)


async def test_an_unknown_scope_type_passes_through_untouched() -> None:
    calls: list[tuple[Scope, Receive, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "custom.event"}

    async def send(message: Message) -> None:
        del message

    scope: Scope = {"type": "custom", "path": "/x"}
    await BackgroundTasksMiddleware(inner)(scope, receive, send)
    ((seen_scope, seen_receive, seen_send),) = calls
    assert seen_scope is scope
    assert scope == {"type": "custom", "path": "/x"}
    assert seen_receive is receive
    assert seen_send is send


async def test_a_websocket_gets_a_batch_and_its_own_receive_and_send() -> None:
    """A websocket's messages are not wrapped: its batch's start_soon tasks run
    beside the handler, its add_task tasks once the connection closed."""
    ran: list[str] = []

    async def note(what: str) -> None:
        ran.append(what)

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        assert receive is server_receive
        assert send is server_send
        batch = from_scope(scope)
        batch.add_task(note, "after close")
        batch.start_soon(note, "beside")
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["beside"]

    async def server_receive() -> Message:
        return {"type": "websocket.connect"}

    async def server_send(message: Message) -> None:
        del message

    middleware = BackgroundTasksMiddleware(inner)
    await middleware({"type": "websocket", "path": "/ws"}, server_receive, server_send)
    assert ran == ["beside", "after close"]
    report = middleware.supervisor.close()
    assert {r.request for r in report.completed} == {"WEBSOCKET /ws"}


async def test_lifespan_reaches_the_inner_app() -> None:
    events: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send_text(send, "ok")

    async with open_client(BackgroundTasksMiddleware(inner)) as client:
        assert (await client.get("/")).text == "ok"
        assert events == ["lifespan.startup"]
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_app_without_lifespan_support_still_reports(caplog: pytest.LogCaptureFixture) -> None:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")
        from_scope(scope).add_task(lambda: None)
        await send_text(send, "ok")

    with caplog.at_level(logging.INFO, logger="trio_background"):
        async with open_client(BackgroundTasksMiddleware(inner)) as client:
            await client.get("/")
    summaries = [r for r in caplog.records if "total" in r.getMessage()]
    assert len(summaries) == 1
    assert "1 completed" in summaries[0].getMessage()


def test_from_scope_without_middleware() -> None:
    with pytest.raises(RuntimeError, match=f"^{INSTALL_HINT}$"):
        from_scope({"type": "http", "path": "/"})


def test_from_scope_on_a_websocket() -> None:
    with pytest.raises(
        RuntimeError,
        match=r"^this request has no background tasks batch: BackgroundTasksMiddleware is not "
        r"installed",
    ):
        from_scope({"type": "websocket"})
    with pytest.raises(
        RuntimeError,
        match=r"^only HTTP requests and websocket connections have background tasks, and this "
        r"is a 'lifespan' scope$",
    ):
        from_scope({"type": "lifespan"})


async def test_fastapi_dependency_without_middleware() -> None:
    app = FastAPI()

    @app.post("/x")
    async def x(background_tasks: BackgroundTasks) -> None:
        del background_tasks

    # open_client would add the middleware; drive the bare app like a server.
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    with pytest.raises(RuntimeError, match=f"^{INSTALL_HINT}$"):
        await app(scope, receive, send)


def test_middleware_needs_an_app() -> None:
    with pytest.raises(
        TypeError,
        match=r"^BackgroundTasksMiddleware wraps an ASGI app, got str; pass the app: ",
    ):
        BackgroundTasksMiddleware("app")  # type: ignore[arg-type]


def test_supervisor_and_options_are_exclusive() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        del scope, receive, send

    with pytest.raises(TypeError, match=r"^pass either supervisor= or the supervisor's options"):
        BackgroundTasksMiddleware(app, supervisor=Supervisor(), on_error="stop")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "later"}, r"^mode must be 'drain' or 'cancel', got 'later'$"),
        ({"drain_timeout": -1}, r"^drain_timeout must be a finite number of seconds >= 0, got -1$"),
        ({"on_error": "ignore"}, r"^on_error must be 'continue' or 'stop', got 'ignore'$"),
        ({"thread_limit": 0}, r"^thread_limit must be an int >= 1, got 0$"),
        ({"keep_records": -5}, r"^keep_records must be an int >= 0, got -5$"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Supervisor(**options)


def test_bad_option_types() -> None:
    with pytest.raises(TypeError, match=r"^drain_timeout must be a number of seconds, got str$"):
        Supervisor(drain_timeout="30")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^error_hook must be a function taking"):
        Supervisor(error_hook="log")  # type: ignore[arg-type]


async def test_inner_middleware_defers_to_outer_and_its_options_apply() -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, on_error="stop")

    def explode() -> None:
        raise ValueError("x")

    def never() -> None:
        raise AssertionError("skipped by on_error='stop'")

    @app.post("/x")
    async def x(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(explode)
        background_tasks.add_task(never)

    # open_client wraps the app in an outer middleware, as serve() does.
    async with open_client(app) as client:
        assert client.middleware.app is app
        await client.post("/x")
        report = await client.shutdown()
    assert client.supervisor.on_error == "stop"
    assert (report.count("failed"), report.count("skipped")) == (1, 1)


NOT_TRIO = (
    "trio-background runs background tasks in trio nurseries, but this server runs "
    "asyncio: serve the app with Hypercorn's trio worker (hypercorn --worker-class trio "
    "module:app; anycorn --worker-class trio module:app) or with trio_background.serve() / "
    "python -m trio_background module:app; "
    'in tests, run the test client on trio: TestClient(app, backend="trio"), or an '
    'anyio_backend fixture that returns "trio"'
)


def run_under_asyncio(scope_type: str) -> list[Message]:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the inner app must not be reached under asyncio")

    middleware = BackgroundTasksMiddleware(inner)
    sent: list[Message] = []

    async def receive() -> Message:
        if scope_type == "lifespan":
            return {"type": "lifespan.startup"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        await middleware({"type": scope_type, "method": "GET", "path": "/"}, receive, send)

    with pytest.raises(RuntimeError, match=f"^{re.escape(NOT_TRIO)}$"):
        asyncio.run(main())
    return sent


def test_refuses_asyncio_at_lifespan_startup() -> None:
    assert run_under_asyncio("lifespan") == [
        {"type": "lifespan.startup.failed", "message": NOT_TRIO}
    ]


def test_refuses_asyncio_at_first_request_without_lifespan() -> None:
    assert run_under_asyncio("http") == []
