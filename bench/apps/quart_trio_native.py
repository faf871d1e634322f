"""Quart-trio with its own add_background_task (the app's nursery)."""

from __future__ import annotations

from typing import Any

from quart_trio import QuartTrio

from bench.apps._common import COUNTS, noop_async, noop_sync, sleep_hour, spin_hour

app = QuartTrio(__name__)

OK = {"ok": True}


@app.get("/none")
async def none() -> dict[str, Any]:
    return OK


@app.get("/async")
async def add_async() -> dict[str, Any]:
    app.add_background_task(noop_async)  # pyright: ignore[reportUnknownMemberType]
    return OK


@app.get("/sync")
async def add_sync() -> dict[str, Any]:
    app.add_background_task(noop_sync)  # pyright: ignore[reportUnknownMemberType]
    return OK


@app.get("/sleep")
async def add_sleep() -> dict[str, Any]:
    app.add_background_task(sleep_hour)  # pyright: ignore[reportUnknownMemberType]
    return OK


@app.get("/spin")
async def add_spin() -> dict[str, Any]:
    app.add_background_task(spin_hour)  # pyright: ignore[reportUnknownMemberType]
    return OK


@app.get("/pending")
async def pending() -> dict[str, Any]:
    return dict(COUNTS)
