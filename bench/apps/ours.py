"""FastAPI with trio-background: the import swap and the middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from bench.apps._common import COUNTS, noop_async, noop_sync, sleep_hour, spin_hour
from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)


@app.get("/none")
async def none() -> dict[str, Any]:
    return {"ok": True}


@app.get("/async")
async def add_async(background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(noop_async)
    return {"ok": True}


@app.get("/sync")
async def add_sync(background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(noop_sync)
    return {"ok": True}


@app.get("/sleep")
async def add_sleep(background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(sleep_hour)
    return {"ok": True}


async def held_open() -> AsyncIterator[dict[str, Any]]:
    """A yield dependency: it stays open until the request's batch has ended."""
    resource: dict[str, Any] = {"open": True}
    try:
        yield resource
    finally:
        resource["open"] = False


@app.get("/sleep-yield")
async def add_sleep_yield(
    background_tasks: BackgroundTasks, resource: Annotated[dict[str, Any], Depends(held_open)]
) -> dict[str, Any]:
    background_tasks.add_task(sleep_hour)
    return {"ok": resource["open"]}


@app.get("/spin")
async def add_spin(background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(spin_hour)
    return {"ok": True}


@app.get("/pending")
async def pending() -> dict[str, Any]:
    return dict(COUNTS)
