"""Background tasks with error handling: the seed's wrapper, and what the library adds.

The seed's error-handling example on trio. Each task goes through
``safe_background_task``, which logs its start, its end, or its failure.
Under FastAPI that wrapper is what keeps one failing task from stopping the
rest; with this library a failing task never stops the next one, and never
reaches the server: the library logs it (task, request, traceback) and
records it as ``failed`` in the shutdown report.

So the wrapper keeps the seed's log lines, and then re-raises: swallowing
the error, as the seed does, would make the report count a failed task as
``completed``. The seed's ``logging.basicConfig`` at import is gone (the
server configures logging: ``python -m trio_background --log-level ...``).

Run it::

    python -m trio_background examples.error_handling:app

and from another shell::

    curl -X POST 'localhost:8000/safe-task/7?message=hello'   # both tasks complete
    curl -X POST 'localhost:8000/safe-task/0?message=hello'   # the first fails, cleanup still runs
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

logger = logging.getLogger(__name__)

app = FastAPI(title="Background tasks with error handling")
app.add_middleware(BackgroundTasksMiddleware)


def safe_background_task(task_name: str, *args: Any, **kwargs: Any) -> None:
    """Wrapper for background tasks with error handling"""
    try:
        logger.info("Starting background task: %s", task_name)

        # Determine which task to run based on task_name
        if task_name == "send_notification":
            send_notification_task(*args, **kwargs)
        elif task_name == "process_data":
            process_data_task(*args, **kwargs)
        elif task_name == "cleanup":
            cleanup_task(*args, **kwargs)
        else:
            raise ValueError(f"Unknown task: {task_name}")

        logger.info("Completed background task: %s", task_name)

    except Exception as e:
        logger.error("Background task %s failed: %s", task_name, e)
        # In a real app, you might want to retry, alert admins, etc. (the
        # middleware's error_hook= is called with every failed task's record).
        # Re-raise, so that the report records the failure.
        raise


def send_notification_task(user_id: int, message: str) -> None:
    if not user_id:
        raise ValueError("User ID is required")
    logger.info("Notification sent to user %d: %s", user_id, message)


def process_data_task(data_id: int) -> None:
    if data_id <= 0:
        raise ValueError("Invalid data ID")
    logger.info("Processed data %d", data_id)


def cleanup_task() -> None:
    logger.info("Cleanup completed")


@app.post("/safe-task/{user_id}")
async def create_safe_task(
    user_id: int, message: str, background_tasks: BackgroundTasks
) -> dict[str, str]:
    # Use the safe wrapper for error handling
    background_tasks.add_task(safe_background_task, "send_notification", user_id, message)
    background_tasks.add_task(safe_background_task, "cleanup")

    return {"message": "Tasks scheduled with error handling"}
