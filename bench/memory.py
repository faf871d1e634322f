"""Memory over a long life: 100,000 requests, one task each; residue per request.

Counts grow, kept records and memory do not: a leak of even one small object
per request would be megabytes here. Prints a table (tracemalloc, after a
warm-up that fills the record deques); ``python -m bench.memory``.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import MutableMapping
from typing import Any

import trio

from bench._table import aligned
from trio_background import BackgroundTasksMiddleware, from_scope

WARM_UP = 10_000
MEASURED = 90_000


async def main() -> None:
    async def noop() -> None:
        pass

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        from_scope(scope).add_task(noop)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = BackgroundTasksMiddleware(app, keep_records=50)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    async def serve(count: int) -> None:
        for _ in range(count):
            await middleware({"type": "http", "method": "GET", "path": "/"}, receive, send)

    await serve(WARM_UP)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await serve(MEASURED)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    report = middleware.supervisor.report()
    print(
        aligned(
            [
                [
                    "requests",
                    "completed (counted)",
                    "records kept",
                    "growth (KiB)",
                    "per request (B)",
                ],
                [
                    f"{WARM_UP + MEASURED:,}",
                    f"{report.count('completed'):,}",
                    str(len(report.completed)),
                    f"{growth / 1024:.1f}",
                    f"{growth / MEASURED:.2f}",
                ],
            ]
        )
    )


if __name__ == "__main__":
    trio.run(main)
