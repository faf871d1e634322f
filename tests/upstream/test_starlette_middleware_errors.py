"""The background case of Starlette's ``tests/middleware/test_errors.py``, ported.

Upstream (Kludex/starlette at 5174d4c8358a6f06aa8056bafd14c2272dab8dd1):
``tests/middleware/test_errors.py``, ``test_background_task`` (the file's
only background case): a task that raises after a 204 response reaches the
app's ``Exception`` handler. Written anew from what it checks, not copied.

Changes: ``trio_background.BackgroundTask``, the middleware, the trio server,
and a wait for the batch.
"""

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trio_background import BackgroundTask, BackgroundTasksMiddleware, TaskRecord

from .conftest import ServeApp

TASK_ERRORS_STAY = (
    "docs/guides/porting.rst: \"A task's exception stays with the task: In Starlette, an "
    "exception from a background task propagates out of the response call, to the "
    'middlewares, the exception handlers and the server."'
)


def raise_exception() -> None:
    raise Exception("Something went wrong")


async def endpoint(request: Request) -> Response:
    task = BackgroundTask(raise_exception)
    return Response(status_code=204, background=task)


@pytest.mark.xfail(strict=True, reason=TASK_ERRORS_STAY)
async def test_background_task(serve: ServeApp) -> None:
    accessed_error_handler = False

    def error_handler(request: Request, exc: Exception) -> Any:
        nonlocal accessed_error_handler
        accessed_error_handler = True

    app = Starlette(
        routes=[Route("/", endpoint=endpoint)],
        exception_handlers={Exception: error_handler},
        middleware=[Middleware(BackgroundTasksMiddleware)],
    )

    async with serve(app) as served:
        response = await served.client.get("/")
        await served.wait_idle()
    assert response.status_code == 204
    assert accessed_error_handler


# Not upstream: the setting that hands a task's exception to your code.
async def test_background_task_error_hook(serve: ServeApp) -> None:
    seen: list[tuple[str, str]] = []

    def error_hook(record: TaskRecord, exc: BaseException) -> None:
        seen.append((record.name, repr(exc)))

    app = Starlette(
        routes=[Route("/", endpoint=endpoint)],
        middleware=[Middleware(BackgroundTasksMiddleware, error_hook=error_hook)],
    )

    async with serve(app) as served:
        response = await served.client.get("/")
        await served.wait_idle()
    assert response.status_code == 204
    assert seen == [("raise_exception", "Exception('Something went wrong')")]
