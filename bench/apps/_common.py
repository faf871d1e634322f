"""Task functions and counters shared by every variant's app.

The counters are per process (one server process serves one app), so a
benchmark can ask a server how many long tasks it has running.
"""

from __future__ import annotations

import anyio

__all__ = ["COUNTS", "SPIN_PERIOD", "noop_async", "noop_sync", "sleep_hour", "spin_hour"]

COUNTS = {"started": 0, "ended": 0}
"""Long tasks (``/sleep`` and ``/spin``) started and ended in this process."""

SPIN_PERIOD = 1.0
"""Seconds between a spinning task's wake-ups."""

HOUR = 3600.0


async def noop_async() -> None:
    return None


def noop_sync() -> None:
    return None


async def sleep_hour() -> None:
    COUNTS["started"] += 1
    try:
        await anyio.sleep(HOUR)
    finally:
        COUNTS["ended"] += 1


async def spin_hour() -> None:
    COUNTS["started"] += 1
    try:
        for _ in range(int(HOUR / SPIN_PERIOD)):
            await anyio.sleep(SPIN_PERIOD)
    finally:
        COUNTS["ended"] += 1
