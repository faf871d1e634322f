"""``trio_background.testing``: the in-process client, the live server, the plugin."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI
from hypercorn.config import Config

from trio_background import BackgroundTasksMiddleware, TaskState, from_scope
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_client, open_live_server

from .conftest import Message, Receive, Scope, Send


def email_app(seconds: float = 3600) -> tuple[FastAPI, list[str], trio.Event]:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, drain_timeout=30)
    sent: list[str] = []
    sending = trio.Event()

    async def send_email(to: str) -> None:
        sending.set()
        await trio.sleep(seconds)
        sent.append(to)

    @app.post("/signup/{to}")
    async def signup(to: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(send_email, to)
        return {"status": "ok"}

    return app, sent, sending


async def test_one_hour_task_runs_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, sent, _ = email_app(3600)
    async with open_client(app) as client:
        await client.post("/signup/ada")
        assert sent == []
        await client.wait_idle()
        assert sent == ["ada"]
        report = await client.shutdown()
    (record,) = report.completed
    assert (record.started_at, record.ended_at) == (0.0, 3600.0)


@pytest.mark.parametrize(
    ("mode", "expected", "at"),
    [("drain", "cancelled", 30.0), ("cancel", "cancelled", 0.0)],
)
async def test_client_shutdown_modes(
    autojump_clock: trio.testing.MockClock, mode: str, expected: str, at: float
) -> None:
    app, sent, sending = email_app(3600)
    async with open_client(app) as client:
        await client.post("/signup/ada")
        await sending.wait()  # SIGTERM arrives while the email is being sent
        report = await client.shutdown(mode=mode)  # type: ignore[arg-type]
        assert await client.shutdown() is report  # once
    assert sent == []
    assert report.count(expected) == 1
    assert trio.current_time() == at


async def test_client_drains_on_exit(autojump_clock: trio.testing.MockClock) -> None:
    app, sent, _ = email_app(10)
    async with open_client(app) as client:
        await client.post("/signup/ada")
    assert sent == ["ada"]
    assert client.report is not None
    assert client.report.all_completed


async def test_client_cancels_when_the_test_body_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, sent, _ = email_app(3600)

    async def failing_test_body() -> None:
        async with open_client(app) as client:
            await client.post("/signup/ada")
            raise KeyError("test failed")

    with pytest.raises(KeyError, match=r"^'test failed'$"):
        await failing_test_body()
    assert sent == []
    assert trio.current_time() == 0


async def test_client_reports_failed_lifespan() -> None:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            await receive()  # type: ignore[operator]
            await send({"type": "lifespan.startup.failed", "message": "no database"})  # type: ignore[operator]

    with pytest.raises(RuntimeError, match=r"^the app's lifespan startup failed: no database$"):
        async with open_client(app):
            pass


async def test_sync_task_in_a_thread_under_autojump_is_not_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under autojump, a thread's real work is not cut by a deadline it would meet
    only 30 s later in production, and the clock's own autojump comes back."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, drain_timeout=30)
    done = threading.Event()

    def real_work() -> None:
        # Real time passes in the thread; if the clock jumped meanwhile, it
        # would reach the 30 s drain deadline and abandon this task.
        time.sleep(0.05)
        done.set()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(real_work)

    async with open_client(app) as client:
        await client.post("/work")
        report = await client.shutdown()
    assert done.is_set()
    assert report.all_completed
    assert autojump_clock.autojump_threshold == 0


@pytest.mark.parametrize("mode", ["drain", "cancel"])
async def test_live_server_shutdown_mid_task(mode: str) -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    started = trio.Event()
    tasks: list[object] = []

    async def forever() -> None:
        started.set()
        await trio.sleep_forever()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> None:
        tasks.append(background_tasks.add_task(forever))

    async with open_live_server(app) as server:
        assert server.url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.post("/work")
        await started.wait()
        report = await server.shutdown(mode=mode, drain_timeout=0)  # type: ignore[arg-type]
    assert report.count("cancelled") == 1
    assert report.mode == mode
    assert getattr(tasks[0], "state") is TaskState.CANCELLED  # noqa: B009


async def test_live_server_leaves_the_callers_config_alone() -> None:
    app = FastAPI()

    @app.get("/")
    async def index() -> str:
        return "hi"

    config = Config()
    config.bind = ["0.0.0.0:8000"]
    config.include_server_header = False
    async with open_live_server(app, config=config) as server:
        assert server.url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/")
    # The config's other options are served; its bind stays the caller's.
    assert response.json() == "hi"
    assert "server" not in response.headers
    assert config.bind == ["0.0.0.0:8000"]


PLUGIN_USER_TESTS = """
import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

sent = []


@pytest.fixture
def asgi_app():
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    async def send_email(to):
        await trio.sleep(60)
        sent.append(to)

    @app.post("/signup/{to}")
    async def signup(to: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(send_email, to)
        return {"status": "ok"}

    return app


async def test_shutdown_cuts_the_email(background_client, autojump_clock):
    response = await background_client.post("/signup/ada")
    assert response.json() == {"status": "ok"}
    await trio.testing.wait_all_tasks_blocked()  # the email is being sent
    report = await background_client.shutdown(mode="cancel")
    assert report.count("cancelled") == 1
    assert sent == []


async def test_drain_sends_the_email(background_client, autojump_clock):
    await background_client.post("/signup/bob")
    report = await background_client.shutdown(mode="drain", drain_timeout=120)
    assert report.all_completed
    assert sent == ["bob"]


async def test_live_server(live_server):
    async with httpx.AsyncClient(base_url=live_server.url) as client:
        assert (await client.post("/signup/cy")).status_code == 200
    report = await live_server.shutdown(mode="cancel")
    assert report.total == 1
"""


def test_plugin_fixtures_in_a_users_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\ntrio_mode = true\n")
    pytester.makepyfile(test_user=PLUGIN_USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_plugin_fixture_outside_trio_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_misuse="""
import pytest

@pytest.fixture
def asgi_app():
    return None

def test_not_trio(background_client):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*the background_client fixture runs in trio, but test_not_trio is not a trio test: "
            "make the test 'async def' and run it with pytest-trio (trio_mode = true in the "
            "pytest config, or @pytest.mark.trio)*"
        ]
    )


def test_plugin_without_asgi_app_fixture_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_missing="""
async def test_forgot(live_server):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*the background_client and live_server fixtures serve the app returned by a fixture*"]
    )


# The client against real Hypercorn: each raw ASGI app below runs both ways
# in the same test and must see the same thing.

ServedBy = Callable[..., Any]


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


@asynccontextmanager
async def in_process(app: Any, http_version: str = "1.1") -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(app, http_version=http_version) as client:  # type: ignore[arg-type]
        yield client


@asynccontextmanager
async def under_hypercorn(app: Any, http_version: str = "1.1") -> AsyncIterator[httpx.AsyncClient]:
    http2 = http_version == "2"
    async with (
        open_live_server(app) as server,
        httpx.AsyncClient(base_url=server.url, http1=not http2, http2=http2) as client,
    ):
        yield client


BOTH = pytest.mark.parametrize("served_by", [in_process, under_hypercorn])


@pytest.mark.parametrize("http_version", ["1.1", "2"])
async def test_scope_is_the_one_hypercorn_gives(http_version: str) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        # Peer addresses differ, and the middleware adds its own key.
        mine = ("headers", "client", "server", "trio_background.exchange")
        seen.append({key: value for key, value in scope.items() if key not in mine})
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body"})

    for served_by in (in_process, under_hypercorn):
        async with served_by(app, http_version) as client:
            assert (await client.get("/caf%C3%A9/x%2Fy?q=%20a&b")).status_code == 200
    in_process_scope, hypercorn_scope = seen
    assert in_process_scope == hypercorn_scope
    assert hypercorn_scope["asgi"] == {"spec_version": "2.1", "version": "3.0"}
    assert hypercorn_scope["http_version"] == http_version
    assert hypercorn_scope["path"] == "/café/x/y"


@BOTH
async def test_disconnect_arrives_during_the_final_body_send(served_by: ServedBy) -> None:
    """As Starlette's streaming responses see it: the listener for
    http.disconnect wakes before the final send has returned."""
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        assert (await receive())["type"] == "http.request"
        async with trio.open_nursery() as nursery:

            async def listen() -> None:
                events.append((await receive())["type"])

            nursery.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"all of it"})
            events.append("final send returned")

    async with served_by(app) as client:
        assert (await client.get("/")).content == b"all of it"
    assert events == ["http.disconnect", "final send returned"]


@BOTH
async def test_every_send_is_a_checkpoint(served_by: ServedBy) -> None:
    checkpoints: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        for message in (
            {"type": "http.response.start", "status": 200},
            {"type": "http.response.body", "body": b"x", "more_body": True},
            {"type": "http.response.body", "body": b"y"},
        ):
            try:
                with trio.testing.assert_checkpoints():
                    await send(message)
            except AssertionError:
                checkpoints.append("none")
            else:
                checkpoints.append("yes")

    async with served_by(app) as client:
        assert (await client.get("/")).content == b"xy"
    assert checkpoints == ["yes", "yes", "yes"]


@BOTH
async def test_request_body_then_an_empty_final_chunk(served_by: ServedBy) -> None:
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        while not received or received[-1]["more_body"]:
            received.append(await receive())
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body"})

    async with served_by(app) as client:
        await client.post("/", content=b"hello")
    assert received == [
        {"type": "http.request", "body": b"hello", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ]


@BOTH
@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
async def test_bodies_the_server_drops(served_by: ServedBy, method: str, status: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await send({"type": "http.response.start", "status": status})
        await send({"type": "http.response.body", "body": b"dropped"})

    async with served_by(app) as client:
        response = await client.request(method, "/")
    assert (response.status_code, response.content) == (status, b"")


@BOTH
async def test_a_message_after_the_response_is_refused(served_by: ServedBy) -> None:
    refused: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})
        try:
            await send({"type": "http.response.body", "body": b"more"})
        except Exception as exc:
            refused.append(f"{type(exc).__name__}: {exc}")

    async with served_by(app) as client:
        assert (await client.get("/")).content == b"ok"
    assert refused == [
        "UnexpectedMessageError: Unexpected message type, http.response.body given the "
        "state ASGIHTTPState.CLOSED"
    ]


async def test_trailers_need_http2_as_under_hypercorn() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"ok"})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"1")]})

    async with open_client(app, http_version="2") as client:
        assert (await client.get("/", headers={"te": "trailers"})).content == b"ok"
    with pytest.raises(
        Exception,
        match=r"^Unexpected message type, http.response.trailers given the state "
        r"ASGIHTTPState.TRAILERS$",
    ):
        async with open_client(app) as client:
            await client.get("/")


NO_HTTPX = """
import sys

sys.modules["httpx"] = None  # from now on, import httpx raises ImportError
sys.modules["httpx2"] = None  # and so does import httpx2
"""

WITHOUT_HTTPX_TESTS = """
import pytest

import trio_background.testing


@pytest.fixture
def asgi_app():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    return app


def test_client_import_names_the_extra():
    with pytest.raises(
        ImportError,
        match=(
            r"^trio_background.testing.open_client is an httpx client, and neither httpx2 "
            r"nor httpx is installed: pip install 'trio-background\\[testing\\]'$"
        ),
    ):
        from trio_background.testing import open_client


async def test_live_server_needs_no_httpx(live_server):
    assert live_server.url.startswith("http://127.0.0.1:")


async def test_client_fixture(background_client):
    pass
"""


def test_without_httpx_the_plugin_loads_and_the_client_names_the_extra(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\ntrio_mode = true\n")
    pytester.makepyfile(no_httpx=NO_HTTPX, test_user=WITHOUT_HTTPX_TESTS)
    # -p loads the blocker before the plugins that packages register.
    result = pytester.runpytest_subprocess("-p", "no_httpx", "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_client_fixture*",
            "*trio_background.testing.open_client is an httpx client, and neither httpx2 "
            "nor httpx is installed: pip install 'trio-background[[]testing[]]'",
        ]
    )
    result.stdout.no_fnmatch_line("*During handling*")


async def test_an_app_served_twice_in_one_run_runs_its_tasks_both_times() -> None:
    """Before: the second time, the tasks never ran and shutdown() returned the
    first report again (the supervisor's state for the run stayed closed)."""
    ran: list[int] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        from_scope(scope).add_task(ran.append, 1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = BackgroundTasksMiddleware(app)
    reports = []
    for _ in range(2):
        async with open_client(middleware) as client:
            await client.get("/")
            reports.append(await client.shutdown())
    assert ran == [1, 1]
    assert [r.count("completed") for r in reports] == [1, 1]
    assert reports[0] is not reports[1]
