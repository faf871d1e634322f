"""Readiness: an ASGI app that answers 200 while serving, 503 once shutdown began.

A load balancer or a Kubernetes readiness probe polls it; the moment the
supervisor's shutdown begins (a signal reached :func:`serve`, before it stops
accepting), it fails, so traffic moves elsewhere while this instance drains.
The body is the supervisor's statistics as JSON, for people reading it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from ._middleware import supervisor_from_scope

if TYPE_CHECKING:
    from ._asgi import ASGIApp, Receive, Scope, Send
    from ._supervisor import Supervisor

__all__ = ["health"]

_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
]


class _Health:
    """The app :func:`health` returns (a class, so Starlette's ``Route`` mounts it as ASGI)."""

    def __init__(self, supervisor: Supervisor | None) -> None:
        self._supervisor = supervisor

    def __repr__(self) -> str:
        return "<trio_background.health()>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, {"error": "use GET"}, head=False, allow=True)
            return
        supervisor = self._supervisor or supervisor_from_scope(scope)
        statistics = supervisor.statistics()
        stopping = supervisor.stopping
        body: dict[str, object] = {
            "status": "shutting down" if stopping else "serving",
            **dataclasses.asdict(statistics),
        }
        status = 503 if stopping else 200
        await _respond(send, status, body, head=method == "HEAD", allow=False)


async def _respond(
    send: Send, status: int, body: dict[str, object], *, head: bool, allow: bool
) -> None:
    data = json.dumps(body, sort_keys=True).encode()
    headers = [*_HEADERS, (b"content-length", str(len(data)).encode())]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else data})


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def health(supervisor: Supervisor | None = None) -> ASGIApp:
    """A mountable ASGI app for readiness probes.

    It answers ``GET`` (and ``HEAD``) with 200 and the supervisor's
    statistics as JSON while serving, and with 503 from the moment shutdown
    is asked for (the first signal to :func:`serve`, or
    ``supervisor.shutting_down``): with :func:`serve`'s ``shutdown_delay``,
    load balancers see the 503 while the server still accepts (and before
    the batch deadline is set), and stop routing to it before it stops.

    Mount it in the app that the middleware wraps::

        app.add_route("/healthz", trio_background.health())  # Starlette, FastAPI

    Args:
        supervisor: The supervisor to report on. None: the one of the
            request's middleware (:func:`supervisor_from_scope`), so the app
            must run inside :class:`BackgroundTasksMiddleware`.

    Raises:
        RuntimeError: On a request, when ``supervisor`` is None and no
            middleware is installed (as :func:`supervisor_from_scope`).
    """
    return _Health(supervisor)
