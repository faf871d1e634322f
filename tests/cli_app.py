"""An app for the whole-process tests: tasks announce themselves on stderr."""

from __future__ import annotations

import sys

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)


async def sleeper(tag: str, seconds: float) -> None:
    print(f"task {tag} started", file=sys.stderr, flush=True)
    await trio.sleep(seconds)


@app.post("/work")
async def work(background_tasks: BackgroundTasks, short: float = 0.2) -> dict[str, str]:
    background_tasks.add_task(sleeper, "short", short)
    background_tasks.add_task(sleeper, "long", 3600)
    background_tasks.add_task(sleeper, "never", 1)
    return {"status": "accepted"}


not_an_app = 42
