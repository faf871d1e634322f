"""Litestar with its own BackgroundTask on the response."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Response, get
from litestar.background_tasks import BackgroundTask

from bench.apps._common import COUNTS, noop_async, noop_sync, sleep_hour, spin_hour

OK = {"ok": True}


@get("/none")
async def none() -> dict[str, Any]:
    return OK


@get("/async")
async def add_async() -> Response[dict[str, Any]]:
    return Response(OK, background=BackgroundTask(noop_async))


@get("/sync")
async def add_sync() -> Response[dict[str, Any]]:
    return Response(OK, background=BackgroundTask(noop_sync))


@get("/sleep")
async def add_sleep() -> Response[dict[str, Any]]:
    return Response(OK, background=BackgroundTask(sleep_hour))


@get("/spin")
async def add_spin() -> Response[dict[str, Any]]:
    return Response(OK, background=BackgroundTask(spin_hour))


@get("/pending")
async def pending() -> dict[str, int]:
    return dict(COUNTS)


app = Litestar(route_handlers=[none, add_async, add_sync, add_sleep, add_spin, pending])
