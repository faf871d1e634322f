"""FastAPI's background-task tutorials and their tests, ported.

Upstream (fastapi/fastapi at c3f316b7e814667e8ee81e03a7330d00ee61e45c):
``docs_src/background_tasks/tutorial001_py310.py``, ``tutorial002_py310.py``,
``tutorial002_an_py310.py``, and their tests
``tests/test_tutorial/test_background_tasks/test_tutorial001.py`` and
``test_tutorial002.py``. Written anew from what those check, not copied.

The changes a user makes: ``BackgroundTasks`` from ``trio_background.fastapi``,
``app.add_middleware(BackgroundTasksMiddleware)``, and a trio server. The
tests also wait for the batch (the response comes back before it runs) and
write ``log.txt`` in a temporary directory instead of the working directory.
"""

from pathlib import Path
from typing import Annotated

import pytest
import trio
from fastapi import Depends, FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

from .conftest import ServeApp


def tutorial001() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    def write_notification(email: str, message: str = "") -> None:
        with open("log.txt", mode="w") as email_file:
            email_file.write(f"notification for {email}: {message}")

    @app.post("/send-notification/{email}")
    async def send_notification(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(write_notification, email, message="some notification")
        return {"message": "Notification sent in the background"}

    return app


def tutorial002(annotated: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    def write_log(message: str) -> None:
        with open("log.txt", mode="a") as log:
            log.write(message)

    def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> str | None:
        if q:
            background_tasks.add_task(write_log, f"found query: {q}\n")
        return q

    if annotated:

        @app.post("/send-notification/{email}")
        async def send_notification(
            email: str, background_tasks: BackgroundTasks, q: Annotated[str, Depends(get_query)]
        ) -> dict[str, str]:
            background_tasks.add_task(write_log, f"message to {email}\n")
            return {"message": "Message sent"}

    else:

        @app.post("/send-notification/{email}")
        async def send_notification_default(
            email: str,
            background_tasks: BackgroundTasks,
            q: str = Depends(get_query),
        ) -> dict[str, str]:
            background_tasks.add_task(write_log, f"message to {email}\n")
            return {"message": "Message sent"}

    return app


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the tutorials write log.txt to the working directory


async def test_tutorial001(serve: ServeApp) -> None:
    async with serve(tutorial001()) as served:
        response = await served.client.post("/send-notification/foo@example.com")
        assert response.status_code == 200, response.text
        assert response.json() == {"message": "Notification sent in the background"}
        await served.wait_idle()
        log = await trio.Path("log.txt").read_text()
        assert "notification for foo@example.com: some notification" in log


@pytest.mark.parametrize("annotated", [False, True], ids=["tutorial002", "tutorial002_an"])
async def test_tutorial002(serve: ServeApp, annotated: bool) -> None:
    async with serve(tutorial002(annotated)) as served:
        response = await served.client.post("/send-notification/foo@example.com?q=some-query")
        assert response.status_code == 200, response.text
        assert response.json() == {"message": "Message sent"}
        await served.wait_idle()
        log = await trio.Path("log.txt").read_text()
        assert "found query: some-query\nmessage to foo@example.com" in log
