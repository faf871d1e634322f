"""The demo: a FastAPI app on trio whose handlers leave work for after the response.

Run it with ``make demo`` (or ``python -m trio_background examples.demo:app``),
then, from another shell::

    curl -X POST localhost:8000/signup/ada@example.com
    curl -X POST 'localhost:8000/report?seconds=20'
    curl -X POST localhost:8000/broken

Each task is logged as it starts and ends. Press Ctrl-C (or send SIGTERM)
while the 20-second report runs: the server drains for up to 10 seconds,
then cuts it, and logs the shutdown report, task by task.
"""

from __future__ import annotations

import logging
import time

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

logger = logging.getLogger("examples.demo")

app = FastAPI(title="trio-background demo")
app.add_middleware(BackgroundTasksMiddleware)


def write_welcome(email: str) -> None:
    """A sync task: runs in a worker thread."""
    logger.info("task write_welcome(%s): started (thread)", email)
    time.sleep(0.5)
    logger.info("task write_welcome(%s): done", email)


async def notify_team(email: str) -> None:
    """An async task: awaited in the request's task, after the response."""
    logger.info("task notify_team(%s): started", email)
    await trio.sleep(1)
    logger.info("task notify_team(%s): done", email)


async def build_report(seconds: float) -> None:
    logger.info("task build_report: started, will take %gs", seconds)
    for step in range(int(seconds)):
        await trio.sleep(1)
        logger.info("task build_report: %d/%d", step + 1, int(seconds))
    logger.info("task build_report: done")


def flaky() -> None:
    raise RuntimeError("the mail server said no")


@app.post("/signup/{email}")
async def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(write_welcome, email)
    background_tasks.add_task(notify_team, email)
    return {"message": f"welcome, {email}: two tasks run after this response"}


@app.post("/report")
async def report(background_tasks: BackgroundTasks, seconds: float = 20) -> dict[str, str]:
    background_tasks.add_task(build_report, seconds)
    return {"message": f"report started ({seconds:g}s); Ctrl-C the server to see the drain"}


@app.post("/broken")
async def broken(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(flaky)
    background_tasks.add_task(notify_team, "after-the-failure@example.com")
    return {"message": "the first task fails, is logged, and the second still runs"}
