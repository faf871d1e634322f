"""Progress tracking with the library's own progress API, instead of a hand-rolled dict.

The seed's progress example (``examples/progress.py`` is the faithful port),
rewritten on what the library provides: the task calls
:func:`trio_background.report_progress` as it goes (a sync task, as in the
seed: it runs in a worker thread); the handler answers with the id that
``add_task`` gave the task; the progress endpoint reads the task's record
from the request's supervisor (:func:`trio_background.supervisor_from_scope`).

There is no dict to keep, to lock, or to clean: the record says ``pending``,
``running``, ``completed`` or ``failed`` (with the error) on its own, and
the supervisor keeps the most recent finished records (``keep_records`` per
final state, 100 by default; older ids answer 404). Ids are ``"<batch>.<index>"``,
given out by the server: a client cannot pick one, nor start the same id twice.

The same supervisor serves the monitor page mounted at ``/admin/tasks``:
protect that path like any admin page (here it is open, for the
demonstration).

Run it::

    python -m trio_background examples.progress_builtin:app

and from another shell::

    curl -X POST 'localhost:8000/start-task?items_count=10'   # {"task_id": "1.0", ...}
    curl localhost:8000/task-progress/1.0      # again and again: 0, 1, 2 ... completed

or open http://localhost:8000/admin/tasks/ in a browser to watch the bar move.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request

from trio_background import (
    BackgroundTasksMiddleware,
    monitor,
    report_progress,
    supervisor_from_scope,
)
from trio_background.fastapi import BackgroundTasks

SECONDS_PER_ITEM = 0.5
"""How long each item takes (the seed's ``time.sleep(0.5)``)."""

app = FastAPI(title="Background tasks with built-in progress")
app.add_middleware(BackgroundTasksMiddleware)
app.mount("/admin/tasks", monitor())


def simulate_work(seconds: float) -> None:
    """Stands in for the work on one item; sync tasks run in worker threads."""
    time.sleep(seconds)


def long_running_task(items_count: int) -> None:
    report_progress(0, items_count, message="Starting task...")
    for i in range(items_count):
        # Simulate work
        simulate_work(SECONDS_PER_ITEM)

        # Update progress
        report_progress(i + 1, items_count, message=f"Processing item {i + 1} of {items_count}")

    # Task completed (what it raises instead is logged and recorded as failed)
    report_progress(items_count, items_count, message="Task completed successfully")


@app.post("/start-task")
async def start_task(
    items_count: Annotated[int, Query(ge=1)], background_tasks: BackgroundTasks
) -> dict[str, str | None]:
    # The id ("<batch>.<index>") is set as soon as the task is added, so the
    # client can poll it at once: the record says "pending" until it starts.
    task_id = background_tasks.add_task(long_running_task, items_count).id
    return {
        "message": f"Task {task_id} started",
        "task_id": task_id,
        "check_progress_url": f"/task-progress/{task_id}",
    }


@app.get("/task-progress/{task_id}")
async def get_task_progress(task_id: str, request: Request) -> dict[str, Any]:
    record = supervisor_from_scope(request.scope).task(task_id)
    if record is None:
        raise HTTPException(status_code=404, detail="Task not found")

    progress = record.progress
    return {
        "status": record.state.value,
        "progress": 0 if progress is None else progress.done,
        "total": None if progress is None else progress.total,
        "message": None if progress is None else progress.message,
        "error": record.error,
    }
