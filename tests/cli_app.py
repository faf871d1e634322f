"""An app for the whole-process tests: tasks announce themselves on stderr."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from fastapi import FastAPI, Request

from trio_background import BackgroundTasksMiddleware, health, supervisor_from_scope
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


app.add_route("/health", health())


@app.get("/pid")
async def pid(background_tasks: BackgroundTasks) -> dict[str, int | str | None]:
    task = background_tasks.add_task(sleeper, "long", 3600)
    return {"pid": os.getpid(), "task": task.id}


@app.get("/status/{task_id}")
async def status(request: Request, task_id: str) -> dict[str, str | int | None]:
    record = supervisor_from_scope(request.scope).task(task_id)
    return {"pid": os.getpid(), "id": None if record is None else record.id}


@app.post("/hold")
async def hold() -> dict[str, str]:
    print("request hold started", file=sys.stderr, flush=True)
    await trio.sleep(30)  # an in-flight request, no task
    return {"status": "done"}


def make_app() -> FastAPI:
    """A factory, for --factory."""
    return app


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    raise AssertionError("never called")


def plain_function(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never called")


def wsgi_factory() -> object:
    return wsgi_app


@app.get("/root-path")
async def root_path(request: Request) -> dict[str, str]:
    return {"root_path": request.scope["root_path"]}


async def block_the_loop() -> None:
    print("task blocking started", file=sys.stderr, flush=True)
    time.sleep(60)  # noqa: ASYNC251 - a task that trio cannot stop


@app.post("/block")
async def block(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(block_the_loop)
    return {"status": "accepted"}


@asynccontextmanager
async def failing_lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("the database is not there")
    yield


failing_startup_app = FastAPI(lifespan=failing_lifespan)


async def block_the_loop_for(seconds: float) -> None:
    print("task blocking started", file=sys.stderr, flush=True)
    time.sleep(seconds)  # noqa: ASYNC251 - the event loop is blocked meanwhile


@app.post("/block-for")
async def block_for(background_tasks: BackgroundTasks, seconds: float) -> dict[str, str]:
    background_tasks.add_task(block_the_loop_for, seconds)
    return {"status": "accepted"}
