"""The background cases of FastAPI's ``tests/test_dependency_contextmanager.py``, ported.

Upstream (fastapi/fastapi at c3f316b7e814667e8ee81e03a7330d00ee61e45c):
``tests/test_dependency_contextmanager.py``, ``test_background_tasks`` and
``test_sync_background_tasks`` (the other cases of that file have no
background task), with the app parts they use: the nested ``yield``
dependencies ``context_a`` and ``context_b``, the ``/context_b_bg`` and
``/sync_context_b_bg`` endpoints, and the HTTP middleware that copies the
state into an ``x-state`` header. Written anew from what those check, not
copied.

What they show: since FastAPI 0.118 a task runs while the request's
``yield`` dependencies are still open (it sees ``started b``), and they
close after it. Changes: ``BackgroundTasks`` from
``trio_background.fastapi``, the middleware, the trio server, and a wait for
the batch before the state after it is checked.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request, Response

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

from .conftest import ServeApp

State = dict[str, str]


def make_app() -> tuple[FastAPI, State]:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    state: State = {
        "context_a": "not started a",
        "context_b": "not started b",
        "bg": "not set",
        "sync_bg": "not set",
    }

    async def get_state() -> State:
        return state

    async def context_a(state: State = Depends(get_state)) -> AsyncIterator[State]:  # noqa: B008
        state["context_a"] = "started a"
        try:
            yield state
        finally:
            state["context_a"] = "finished a"

    async def context_b(state: State = Depends(context_a)) -> AsyncIterator[State]:  # noqa: B008
        state["context_b"] = "started b"
        try:
            yield state
        finally:
            state["context_b"] = f"finished b with a: {state['context_a']}"

    @app.get("/context_b_bg")
    async def get_context_b_bg(
        tasks: BackgroundTasks,
        state: State = Depends(context_b),  # noqa: B008
    ) -> State:
        async def bg(state: State) -> None:
            state["bg"] = f"bg set - b: {state['context_b']} - a: {state['context_a']}"

        tasks.add_task(bg, state)
        return state

    @app.get("/sync_context_b_bg")
    async def get_sync_context_b_bg(
        tasks: BackgroundTasks,
        state: State = Depends(context_b),  # noqa: B008
    ) -> State:
        async def bg(state: State) -> None:
            state["sync_bg"] = f"sync_bg set - b: {state['context_b']} - a: {state['context_a']}"

        tasks.add_task(bg, state)
        return state

    @app.middleware("http")
    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        response: Response = await call_next(request)
        response.headers["x-state"] = json.dumps(state.copy())
        return response

    return app, state


async def test_background_tasks(serve: ServeApp) -> None:
    app, state = make_app()
    async with serve(app) as served:
        response = await served.client.get("/context_b_bg")
        data = response.json()
        assert data["context_b"] == "started b"
        assert data["context_a"] == "started a"
        assert data["bg"] == "not set"
        middleware_state = json.loads(response.headers["x-state"])
        assert middleware_state["context_b"] == "started b"
        assert middleware_state["context_a"] == "started a"
        assert middleware_state["bg"] == "not set"
        await served.wait_idle()
    assert state["context_b"] == "finished b with a: started a"
    assert state["context_a"] == "finished a"
    assert state["bg"] == "bg set - b: started b - a: started a"


async def test_sync_background_tasks(serve: ServeApp) -> None:
    app, state = make_app()
    async with serve(app) as served:
        response = await served.client.get("/sync_context_b_bg")
        data = response.json()
        assert data["context_b"] == "started b"
        assert data["context_a"] == "started a"
        assert data["sync_bg"] == "not set"
        await served.wait_idle()
    assert state["context_b"] == "finished b with a: started a"
    assert state["context_a"] == "finished a"
    assert state["sync_bg"] == "sync_bg set - b: started b - a: started a"
