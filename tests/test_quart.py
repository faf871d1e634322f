"""``trio_background.quart``: the Quart-trio extension and ``background_tasks()``."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import weakref
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing
from quart import Quart, abort, current_app, g, request, session
from quart_trio import QuartTrio

from trio_background import BackgroundTasksMiddleware
from trio_background.quart import BackgroundTasksExtension, background_tasks
from trio_background.testing import open_client, open_live_server


def make_app(**options: object) -> tuple[QuartTrio, list[tuple[str, ...]]]:
    app = QuartTrio(__name__)
    app.secret_key = "test"
    BackgroundTasksExtension(app, **options)
    seen: list[tuple[str, ...]] = []

    async def async_task(label: str) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(
            (label, current_app.name, request.path, request.args["who"], g.user, session["who"])
        )

    def sync_task(label: str) -> None:
        assert threading.current_thread() is not threading.main_thread()
        seen.append(
            (label, current_app.name, request.path, request.args["who"], g.user, session["who"])
        )

    @app.get("/hello")
    async def hello() -> str:
        g.user = "ada"
        session["who"] = request.args["who"]
        background_tasks().add_task(async_task, "async")
        background_tasks().add_task(sync_task, "sync")
        background_tasks().start_soon(async_task, "start_soon")
        return "hello"

    return app, seen


async def test_tasks_see_the_app_and_a_copy_of_the_request_context() -> None:
    app, seen = make_app()
    async with open_client(app) as client:
        response = await client.get("/hello", params={"who": "grace"})
        assert response.text == "hello"
        await client.wait_idle()
        report = await client.shutdown()
    assert sorted(seen) == [
        (label, app.name, "/hello", "grace", "ada", "grace")
        for label in ("async", "start_soon", "sync")
    ]
    assert report.counts["completed"] == report.total == 3


async def test_under_real_hypercorn() -> None:
    app, seen = make_app()
    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/hello", params={"who": "alan"})
        report = await server.shutdown()
    assert response.status_code == 200
    assert len(seen) == 3
    assert {entry[3] for entry in seen} == {"alan"}
    assert report.counts["completed"] == 3


async def test_options_reach_the_middleware(autojump_clock: trio.testing.MockClock) -> None:
    app = QuartTrio(__name__)
    extension = BackgroundTasksExtension(app, drain_timeout=5)

    async def slow() -> None:
        await trio.sleep(60)

    @app.get("/")
    async def index() -> str:
        background_tasks().add_task(slow)
        background_tasks().add_task(slow)
        return ""

    assert isinstance(app.asgi_app, BackgroundTasksMiddleware)
    assert app.extensions["trio_background"] is extension
    async with open_client(app) as client:
        await client.get("/")
        report = await client.shutdown()
    assert report.drain_timeout == 5
    assert report.counts["cancelled"] == 1
    assert report.counts["skipped"] == 1
    assert extension.supervisor is client.supervisor


@pytest.mark.parametrize("status", [None, 404])
async def test_a_view_that_raises_loses_its_batch(status: int | None) -> None:
    app = QuartTrio(__name__)
    BackgroundTasksExtension(app)
    ran: list[str] = []

    @app.get("/")
    async def index() -> str:
        background_tasks().add_task(ran.append, "ran")
        if status is None:
            raise ValueError("boom")
        abort(status)

    async with open_client(app) as client:
        response = await client.get("/")
        report = await client.shutdown()
    assert response.status_code == (500 if status is None else status)
    assert ran == []
    assert report.counts["skipped"] == report.total == 1
    name = "ValueError" if status is None else "NotFound"
    assert report.skipped[0].reason == f"the view raised {name}"


async def test_application_factory() -> None:
    extension = BackgroundTasksExtension(mode="cancel")
    with pytest.raises(
        RuntimeError,
        match=r"^this BackgroundTasksExtension has no app yet: call init_app\(app\) first$",
    ):
        _ = extension.supervisor
    app = QuartTrio(__name__)
    extension.init_app(app)
    assert extension.supervisor.mode == "cancel"
    with pytest.raises(
        TypeError,
        match=r"^this app already has a BackgroundTasksExtension; initialise it once per app$",
    ):
        BackgroundTasksExtension(app)
    with pytest.raises(
        TypeError, match=r"^this BackgroundTasksExtension already serves an app; make one per app$"
    ):
        extension.init_app(QuartTrio(__name__))


def test_plain_quart_is_refused() -> None:
    with pytest.raises(
        TypeError,
        match=r"^BackgroundTasksExtension needs a Quart-trio app, got Quart; Quart itself "
        r"runs on asyncio: make the app with from quart_trio import QuartTrio; "
        r"app = QuartTrio\(__name__\)$",
    ):
        BackgroundTasksExtension(Quart(__name__))


async def test_background_tasks_outside_a_request() -> None:
    app = QuartTrio(__name__)
    BackgroundTasksExtension(app)
    async with app.app_context():
        with pytest.raises(
            RuntimeError,
            match=r"^background_tasks\(\) works inside a Quart request \(a view, or a "
            r"before/after request function\), where the request's batch is; outside one, "
            r"for work that belongs to no request, use app.add_background_task\(func\)$",
        ):
            background_tasks()


async def test_quarts_own_test_client_runs_the_tasks() -> None:
    app, seen = make_app()
    async with app.test_app():
        response = await app.test_client().get("/hello", query_string={"who": "ada"})
        assert await response.get_data(as_text=True) == "hello"
        # Its request returns once the whole app call, batch included, has.
        assert len(seen) == 3


async def test_background_tasks_without_the_extension() -> None:
    app = QuartTrio(__name__)
    errors: list[str] = []

    @app.get("/")
    async def index() -> str:
        try:
            background_tasks()
        except RuntimeError as exc:
            errors.append(str(exc))
        return ""

    # Quart's own test client, and no extension: no middleware either.
    async with app.test_app():
        await app.test_client().get("/")
    assert errors == [
        "this request has no background tasks batch: the app has no "
        "BackgroundTasksExtension; install it with BackgroundTasksExtension(app)"
    ]


def test_import_error_names_the_extra() -> None:
    program = textwrap.dedent(
        """
        import sys
        sys.modules["quart_trio"] = None  # as if Quart-trio were not installed
        try:
            import trio_background.quart
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == (
        "trio_background.quart needs Quart-trio: pip install 'trio-background[quart]'"
    )


async def test_no_contexts_are_kept_once_tasks_end() -> None:
    app, seen = make_app()
    kept: list[weakref.ref[Any]] = []

    @app.after_request
    async def remember(response: Any) -> Any:
        kept.append(weakref.ref(g._get_current_object()))
        return response

    async with open_client(app) as client:
        for who in ("a", "b", "c"):
            await client.get("/hello", params={"who": who})
        await client.wait_idle()
        assert len(seen) == 9
    # What the tasks saw (the request's g, copied into each task's context) is
    # freed once they ended: no task keeps a request alive.
    gc.collect()
    assert [ref() for ref in kept] == [None] * 3
