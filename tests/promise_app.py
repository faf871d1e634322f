"""An app for the whole-process load tests: one tiny task per request."""

from __future__ import annotations

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)


async def tiny() -> None:
    await trio.lowlevel.checkpoint()


@app.get("/tiny")
async def get_tiny(background_tasks: BackgroundTasks) -> str:
    background_tasks.add_task(tiny)
    return "ok"
