"""Basic background task: write a notification line after the response.

The seed's first example on trio. The handler adds one sync task; the client
gets its answer at once, and the task then runs in a worker thread and
appends ``notification for EMAIL: MESSAGE`` to ``log.txt``.

Run it from the project's root (``log.txt`` is written to the current
directory)::

    python -m trio_background examples.basic:app

and from another shell::

    curl -X POST localhost:8000/send-notification/ada@example.com
    cat log.txt
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

LOG_PATH = Path("log.txt")
"""Where notifications go; a relative path is relative to the server's working directory."""

app = FastAPI(title="Basic background task")
app.add_middleware(BackgroundTasksMiddleware)


def write_notification(email: str, message: str = "") -> None:
    # Append, not overwrite: two notifications in a row must both be kept.
    with LOG_PATH.open(mode="a", encoding="utf-8") as email_file:
        content = f"notification for {email}: {message}\n"
        email_file.write(content)


@app.post("/send-notification/{email}")
async def send_notification(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(write_notification, email, message="some notification")
    return {"message": "Notification sent in the background"}
