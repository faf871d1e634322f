"""``trio_background.testing``: the in-process client, the live server, the plugin."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, TaskState
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_client, open_live_server


def email_app(seconds: float = 3600) -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, drain_timeout=30)
    sent: list[str] = []

    async def send_email(to: str) -> None:
        await trio.sleep(seconds)
        sent.append(to)

    @app.post("/signup/{to}")
    async def signup(to: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(send_email, to)
        return {"status": "ok"}

    return app, sent


async def test_one_hour_task_takes_under_a_second(autojump_clock: trio.testing.MockClock) -> None:
    app, sent = email_app(3600)
    real_start = time.perf_counter()
    async with open_client(app) as client:
        await client.post("/signup/ada")
        assert sent == []
        await client.wait_idle()
    assert sent == ["ada"]
    assert trio.current_time() == 3600
    assert time.perf_counter() - real_start < 1


@pytest.mark.parametrize(
    ("mode", "expected", "at"),
    [("drain", "cancelled", 30.0), ("cancel", "cancelled", 0.0)],
)
async def test_client_shutdown_modes(
    autojump_clock: trio.testing.MockClock, mode: str, expected: str, at: float
) -> None:
    app, sent = email_app(3600)
    async with open_client(app) as client:
        await client.post("/signup/ada")
        report = await client.shutdown(mode=mode)  # type: ignore[arg-type]
        assert await client.shutdown() is report  # once
    assert sent == []
    assert report.count(expected) == 1
    assert trio.current_time() == at


async def test_client_drains_on_exit(autojump_clock: trio.testing.MockClock) -> None:
    app, sent = email_app(10)
    async with open_client(app) as client:
        await client.post("/signup/ada")
    assert sent == ["ada"]
    assert client.report is not None
    assert client.report.all_completed


async def test_client_cancels_when_the_test_body_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app, sent = email_app(3600)

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
    """The known hole, handled: autojump is held while a task's thread runs."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, drain_timeout=30)
    done = threading.Event()

    def real_work() -> None:
        # Real time passes in the thread; without the hold, the clock would
        # jump to the 30 s drain deadline and abandon this task.
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
    assert trio.current_time() == 0
    assert autojump_clock.autojump_threshold == 0  # given back


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


PLUGIN_USER_TESTS = """
import httpx
import pytest
import trio
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
