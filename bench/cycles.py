"""Reference cycles per request: garbage the collector must find, per 1,000 requests.

Hypercorn's ``send`` is a method of an object that holds the scope, and the
scope holds the request's exchange: unless the middleware breaks that ring
when the app returns, every request leaves a cycle and the collector's pauses
grow with traffic. This prints the garbage found after a batch of requests
with and without a background task (target: 0), as a table; it measures,
it does not assert.

Run: ``python -m bench.cycles``
"""

from __future__ import annotations

import gc
from typing import Any

import trio

from trio_background import BackgroundTasksMiddleware, from_scope

REQUESTS = 1_000


async def _noop() -> None:
    pass


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/task":
        from_scope(scope).add_task(_noop)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class _Stream:
    """Stands for Hypercorn's stream: its send is a method of an object holding the scope."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def send(self, message: dict[str, Any]) -> None:
        pass


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _garbage(path: str) -> int:
    middleware = BackgroundTasksMiddleware(_app)  # type: ignore[arg-type]

    async def serve(count: int) -> None:
        for _ in range(count):
            scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path}
            await middleware(scope, _receive, _Stream(scope).send)

    await serve(10)  # warm up
    gc.collect()
    gc.disable()
    try:
        await serve(REQUESTS)
        return gc.collect()
    finally:
        gc.enable()


def main() -> None:
    rows = [(path, trio.run(_garbage, path)) for path in ("/none", "/task")]
    print(f"{'request':<10} {'garbage objects per ' + str(REQUESTS) + ' requests':>38}  target 0")
    for path, garbage in rows:
        print(f"{path:<10} {garbage:>38}  {'PASS' if garbage == 0 else 'MISS'}")


if __name__ == "__main__":
    main()
