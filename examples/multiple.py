"""Multiple background tasks: three tasks, run one after another after the response.

The seed's second example on trio. The handler adds two slow sync tasks and
a cleanup task; the client gets its answer at once, then the tasks run in
the order they were added, each in a worker thread, so the slow steps never
block the server. The seed's ``print`` calls are log lines (logger
``examples.multiple``), which the server prints.

Run it::

    python -m trio_background examples.multiple:app

and from another shell::

    curl -X POST localhost:8000/process/ada

Five seconds later the server has logged "Task 1 completed for ada",
"Task 2 completed for ada" and "Cleanup completed", in that order. Press
Ctrl-C before then to see the drain, then the shutdown report.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

logger = logging.getLogger(__name__)

TASK_1_SECONDS = 2.0
"""How long slow_task_1 works (the seed's ``time.sleep(2)``)."""
TASK_2_SECONDS = 3.0
"""How long slow_task_2 works (the seed's ``time.sleep(3)``)."""

app = FastAPI(title="Multiple background tasks")
app.add_middleware(BackgroundTasksMiddleware)


def simulate_work(seconds: float) -> None:
    """Stands in for real blocking work; sync tasks run in worker threads."""
    time.sleep(seconds)


def slow_task_1(name: str) -> None:
    simulate_work(TASK_1_SECONDS)
    logger.info("Task 1 completed for %s", name)


def slow_task_2(name: str) -> None:
    simulate_work(TASK_2_SECONDS)
    logger.info("Task 2 completed for %s", name)


def cleanup_task() -> None:
    logger.info("Cleanup completed")


@app.post("/process/{name}")
async def process_data(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    # Add multiple background tasks: they run in this order, one at a time.
    background_tasks.add_task(slow_task_1, name)
    background_tasks.add_task(slow_task_2, name)
    background_tasks.add_task(cleanup_task)

    return {"message": f"Processing started for {name}"}
