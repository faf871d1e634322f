"""Starlette with asgi-background: tasks run in a lifespan-wide task group.

asgi-background takes async functions only, so the sync task is handed to
``anyio.to_thread.run_sync``, as its README suggests for blocking work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
from asgi_background import BackgroundTaskMiddleware, BackgroundTasks
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.apps._common import COUNTS, noop_async, noop_sync, sleep_hour, spin_hour

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from starlette.requests import Request

OK = {"ok": True}


async def none(request: Request) -> JSONResponse:
    return JSONResponse(OK)


def _adding(
    func: Callable[..., Coroutine[Any, Any, Any]], *args: Any
) -> Callable[[Request], object]:
    async def endpoint(request: Request) -> JSONResponse:
        await BackgroundTasks(request.scope).add_task(func, *args)
        return JSONResponse(OK)

    return endpoint


async def pending(request: Request) -> JSONResponse:
    return JSONResponse(dict(COUNTS))


app = Starlette(
    routes=[
        Route("/none", none),
        Route("/async", _adding(noop_async)),
        Route("/sync", _adding(anyio.to_thread.run_sync, noop_sync)),
        Route("/sleep", _adding(sleep_hour)),
        Route("/spin", _adding(spin_hour)),
        Route("/pending", pending),
    ],
    middleware=[Middleware(BackgroundTaskMiddleware)],
)
