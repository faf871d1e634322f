"""The background case of FastAPI's ``tests/test_response_dependency.py``, ported.

Upstream (fastapi/fastapi at c3f316b7e814667e8ee81e03a7330d00ee61e45c):
``tests/test_response_dependency.py``,
``test_background_tasks_with_depends_annotated`` (the file's only background
case): a dependency that takes ``BackgroundTasks``, adds a task and returns
the batch, used as ``Annotated[BackgroundTasks, Depends(...)]``. Written anew
from what it checks, not copied.

Changes: ``BackgroundTasks`` from ``trio_background.fastapi`` (already an
``Annotated`` alias: FastAPI uses the last ``Depends`` of the nested
annotation), the middleware, the trio server, and a wait for the batch.
"""

from typing import Annotated

from fastapi import Depends, FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

from .conftest import ServeApp


async def test_background_tasks_with_depends_annotated(serve: ServeApp) -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    task_results: list[str] = []

    def background_task(message: str) -> None:
        task_results.append(message)

    def add_background_task(background_tasks: BackgroundTasks) -> BackgroundTasks:
        background_tasks.add_task(background_task, "from dependency")
        return background_tasks

    @app.get("/")
    def endpoint(
        background_tasks: Annotated[BackgroundTasks, Depends(add_background_task)],
    ) -> dict[str, str]:
        background_tasks.add_task(background_task, "from endpoint")
        return {"status": "ok"}

    async with serve(app) as served:
        response = await served.client.get("/")
        await served.wait_idle()

    assert response.status_code == 200
    assert "from dependency" in task_results
    assert "from endpoint" in task_results
