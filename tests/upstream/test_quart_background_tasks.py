"""Quart's ``tests/test_background_tasks.py``, ported to Quart-trio and this library.

Upstream (pallets/quart at 657bca721bbcc53047fc964c0593c5c0d19f45c8):
``tests/test_background_tasks.py``, every case: ``test_background_task``,
``test_lifespan_background_task`` and ``test_sync_background_task``.
Written anew from what they check, not copied.

Changes: ``QuartTrio`` for ``Quart`` (the trio backend), the extension
``BackgroundTasksExtension(app)``, ``background_tasks().add_task(func)``
for ``app.add_background_task(func)``, ``trio.sleep`` for
``asyncio.sleep``, the client of this suite for ``app.test_client()``, and a
wait for the batch where upstream's ``async with app.test_app()`` waits for
Quart's own background tasks.
"""

import time

import pytest
import trio
from quart import current_app
from quart_trio import QuartTrio

from trio_background.quart import BackgroundTasksExtension, background_tasks

from .conftest import ServeApp

NO_BATCH_OUTSIDE_A_REQUEST = (
    'docs/guides/porting.rst: "Quart: a task belongs to a request: background_tasks() '
    "raises RuntimeError outside one (before_serving, a CLI command); keep "
    "app.add_background_task() for the app's own work.\""
)


async def test_background_task(serve: ServeApp) -> None:
    app = QuartTrio(__name__)
    BackgroundTasksExtension(app)
    app.config["DATA"] = "data"

    data = None

    async def background() -> None:
        nonlocal data
        await trio.sleep(0.5)  # the feature: outlasts the response
        data = current_app.config["DATA"]

    @app.route("/")
    async def index() -> str:
        background_tasks().add_task(background)
        return ""

    async with serve(app) as served:
        await served.client.get("/")
        await served.wait_idle()

    assert data == "data"


@pytest.mark.xfail(strict=True, reason=NO_BATCH_OUTSIDE_A_REQUEST)
async def test_lifespan_background_task(serve: ServeApp) -> None:
    app = QuartTrio(__name__)
    BackgroundTasksExtension(app)
    app.config["DATA"] = "data"

    data = None

    async def background() -> None:
        nonlocal data
        await trio.sleep(0.5)  # the feature: outlasts the response
        data = current_app.config["DATA"]

    @app.before_serving
    async def startup() -> None:
        background_tasks().add_task(background)

    async with serve(app) as served:
        await served.wait_idle()

    assert data == "data"


async def test_sync_background_task(serve: ServeApp) -> None:
    app = QuartTrio(__name__)
    BackgroundTasksExtension(app)
    app.config["DATA"] = "data"

    data = None

    def background() -> None:
        nonlocal data
        time.sleep(0.5)  # the feature: outlasts the response
        data = current_app.config["DATA"]

    @app.route("/")
    async def index() -> str:
        background_tasks().add_task(background)
        return ""

    async with serve(app) as served:
        await served.client.get("/")
        await served.wait_idle()

    assert data == "data"
