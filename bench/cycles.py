"""Reference cycles: garbage the collector must find, per 1,000 requests or cut batches.

Hypercorn's ``send`` is a method of an object that holds the scope, and the
scope holds the request's exchange: unless the middleware breaks that ring
when the app returns, every request leaves a cycle and the collector's pauses
grow with traffic. The same goes for shutdown: a task cut by the deadline
ends in an exception whose traceback holds the frame that caught it, so a
runner that keeps the exception in that frame leaves one cycle per cut task,
found only when the collector walks the whole heap, at the worst moment.

This prints the garbage found after a batch of requests with and without a
background task, and after a shutdown that cut a batch per request (target:
0 for each), as a table; it measures, it does not assert.

Run: ``python -m bench.cycles``
"""

from __future__ import annotations

import gc
import logging
from collections.abc import MutableMapping
from typing import Any

import trio

from trio_background import BackgroundTasksMiddleware, from_scope

REQUESTS = 1_000
CUT = 1_000
"""Requests whose batch (one task sleeping forever) shutdown cuts."""
WARM_UP = 10


async def _noop() -> None:
    pass


class _Pending:
    """The tasks of the cut scenario that have started, and when all of them have."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.started = 0
        self.all_started = trio.Event()

    async def sleep_forever(self) -> None:
        self.started += 1
        if self.started == self.count:
            self.all_started.set()
        await trio.sleep_forever()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/task":
        from_scope(scope).add_task(_noop)
    elif scope["path"] == "/sleep":
        from_scope(scope).add_task(scope["bench.pending"].sleep_forever)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class _Stream:
    """Stands for Hypercorn's stream: its send is a method of an object holding the scope."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def send(self, message: MutableMapping[str, Any]) -> None:
        pass


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _garbage(path: str) -> int:
    middleware = BackgroundTasksMiddleware(_app)  # type: ignore[arg-type]

    async def serve(count: int) -> None:
        for _ in range(count):
            scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path}
            await middleware(scope, _receive, _Stream(scope).send)

    await serve(WARM_UP)
    gc.collect()
    gc.disable()
    try:
        await serve(REQUESTS)
        return gc.collect()
    finally:
        gc.enable()


async def _cut(count: int) -> None:
    """``count`` requests, each in its own task, each leaving a task that sleeps forever;
    then a shutdown in cancel mode cuts every batch, and waits until all are recorded.
    """
    # A supervisor shuts down once per trio run: a new middleware (and so a new
    # supervisor) for each call.
    middleware = BackgroundTasksMiddleware(_app)  # type: ignore[arg-type]
    pending = _Pending(count)

    async def request() -> None:
        # A batch runs in its request's task, after the response: so one task per request.
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/sleep",
            "bench.pending": pending,
        }
        await middleware(scope, _receive, _Stream(scope).send)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(request)
        await pending.all_started.wait()
        report = await middleware.supervisor.shutdown(mode="cancel", cause="bench")
    if report.counts.get("cancelled", 0) != count:
        raise RuntimeError(f"expected {count} cancelled tasks in the report, got {report.counts}")


async def _garbage_cut() -> int:
    await _cut(WARM_UP)
    gc.collect()
    gc.disable()
    try:
        await _cut(CUT)
        return gc.collect()
    finally:
        gc.enable()


def main() -> None:
    # The shutdown's one WARNING (tasks not completed, as intended here) is created as
    # in a server, but not printed over the table.
    log = logging.getLogger("trio_background")
    handler = logging.NullHandler()
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    try:
        rows = [
            (f"{path} requests", REQUESTS, "requests", trio.run(_garbage, path))
            for path in ("/none", "/task")
        ]
        rows.append(
            ("batches cut at shutdown (cancel)", CUT, "cut batches", trio.run(_garbage_cut))
        )
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    print(f"{'scenario':<34} {'garbage objects':>15}  {'per':<18} target 0")
    for label, count, unit, garbage in rows:
        per_1000 = f"{garbage * 1000 / count:g}"
        verdict = "PASS" if garbage == 0 else "MISS"
        print(f"{label:<34} {per_1000:>15}  {'1000 ' + unit:<18} {verdict}")


if __name__ == "__main__":
    main()
