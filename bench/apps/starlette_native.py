"""Starlette with its own BackgroundTask on the response."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.apps._common import COUNTS, noop_async, noop_sync, sleep_hour, spin_hour

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request

OK = {"ok": True}


async def none(request: Request) -> JSONResponse:
    return JSONResponse(OK)


def _adding(func: Callable[[], object]) -> Callable[[Request], object]:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(OK, background=BackgroundTask(func))

    return endpoint


async def pending(request: Request) -> JSONResponse:
    return JSONResponse(dict(COUNTS))


app = Starlette(
    routes=[
        Route("/none", none),
        Route("/async", _adding(noop_async)),
        Route("/sync", _adding(noop_sync)),
        Route("/sleep", _adding(sleep_hour)),
        Route("/spin", _adding(spin_hour)),
        Route("/pending", pending),
    ]
)
