"""FastAPI with its own BackgroundTasks (Starlette's, run after the response)."""

from __future__ import annotations

from typing import Any

from fastapi import BackgroundTasks, FastAPI

from bench.apps._common import COUNTS, noop_async, noop_sync, sleep_hour, spin_hour

app = FastAPI()


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


@app.get("/spin")
async def add_spin(background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(spin_hour)
    return {"ok": True}


@app.get("/pending")
async def pending() -> dict[str, Any]:
    return dict(COUNTS)
