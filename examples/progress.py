"""Background tasks with progress tracking: start a task, then poll its progress.

The seed's progress example on trio: an in-memory dict of progress records
(a real service would use Redis or a database), a sync task that updates its
record after each item (it runs in a worker thread), and an endpoint that
reads it.

What real use needs, and the seed lacks: the task id is reserved in the
handler, before the task is added, with status ``pending``. In the seed the
id only appeared once the task had started, so a second request with the
same id, or a poll, in between saw no task: the first was run twice, the
second got "not found". Errors are HTTP errors (409 for a duplicate id, 404
for an unknown one) instead of a 200 with an ``error`` field; the count must
be at least 1; the progress endpoint returns a copy of the record (the task's
thread replaces fields while the server reads them); and a failure is
recorded in the task's record and re-raised, so the library logs it and
counts the task ``failed``.

Run it::

    python -m trio_background examples.progress:app

and from another shell::

    curl -X POST 'localhost:8000/start-task/job1?items_count=10'
    curl localhost:8000/task-progress/job1      # again and again: 0, 1, 2 ... completed
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

SECONDS_PER_ITEM = 0.5
"""How long each item takes (the seed's ``time.sleep(0.5)``)."""

app = FastAPI(title="Background tasks with progress tracking")
app.add_middleware(BackgroundTasksMiddleware)

# In-memory progress tracking (use Redis or database in production). Each
# record is changed with one dict.update() call and read with one dict()
# copy: both are atomic, so the server never sees a half-updated record.
task_progress: dict[str, dict[str, Any]] = {}


def simulate_work(seconds: float) -> None:
    """Stands in for the work on one item; sync tasks run in worker threads."""
    time.sleep(seconds)


def long_running_task(task_id: str, items_count: int) -> None:
    task_progress[task_id].update({"status": "running", "message": "Starting task..."})

    try:
        for i in range(items_count):
            # Simulate work
            simulate_work(SECONDS_PER_ITEM)

            # Update progress
            task_progress[task_id].update(
                {"progress": i + 1, "message": f"Processing item {i + 1} of {items_count}"}
            )

        # Task completed
        task_progress[task_id].update(
            {"status": "completed", "message": "Task completed successfully"}
        )

    except Exception as e:
        task_progress[task_id].update({"status": "failed", "message": f"Task failed: {e}"})
        raise  # the library logs it and records the task as failed


@app.post("/start-task/{task_id}")
async def start_task(
    task_id: str, items_count: Annotated[int, Query(ge=1)], background_tasks: BackgroundTasks
) -> dict[str, str]:
    if task_id in task_progress:
        raise HTTPException(status_code=409, detail="Task with this ID already exists")

    # Reserve the id now: the task starts only after the response.
    task_progress[task_id] = {
        "status": "pending",
        "progress": 0,
        "total": items_count,
        "message": "Waiting to start",
    }
    background_tasks.add_task(long_running_task, task_id, items_count)

    return {
        "message": f"Task {task_id} started",
        "task_id": task_id,
        "check_progress_url": f"/task-progress/{task_id}",
    }


@app.get("/task-progress/{task_id}")
async def get_task_progress(task_id: str) -> dict[str, Any]:
    if task_id not in task_progress:
        raise HTTPException(status_code=404, detail="Task not found")

    return dict(task_progress[task_id])
