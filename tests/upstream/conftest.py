"""How the ported upstream tests serve their apps: in process, and under real Hypercorn.

Upstream, these tests use Starlette's ``TestClient`` (sync, AnyIO), whose
request returns only once the whole app call, background tasks included,
has returned. Here every test runs twice, through the ``served`` fixture:

- ``in-process``: :func:`trio_background.testing.open_client`, whose request
  returns as soon as the response is complete, as under a real server;
- ``hypercorn``: :func:`trio_background.testing.open_live_server` (real
  Hypercorn, trio worker, on 127.0.0.1:0) and an httpx client.

Either way the request returns before its tasks have run, so a test that
checks a task's effect first calls :meth:`Served.wait_idle`, never sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from trio_background import ShutdownReport, Supervisor
from trio_background.testing import open_client, open_live_server

ASGIApp = Callable[..., Any]


class InFlight:
    """An ASGI wrapper that knows when no HTTP request is being handled.

    Hypercorn does not say when an app call has returned (the client has its
    response before that); the live server's tests wait for it through this.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0
        self.idle = trio.Event()
        self.idle.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.count == 0:
            self.idle = trio.Event()
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self.idle.set()

    async def wait(self) -> None:
        while self.count:
            await self.idle.wait()


@dataclass
class Served:
    """An app being served, the way one test parameter says.

    Attributes:
        how: ``"in-process"`` or ``"hypercorn"``.
        client: An httpx client on the app (base URL set).
        supervisor: The supervisor that runs the app's batches.
    """

    how: str
    client: httpx.AsyncClient
    supervisor: Supervisor
    _wait: Callable[[], Any]
    _shutdown: Callable[..., Any]

    async def wait_idle(self) -> None:
        """Return once no request is being handled and no batch is running."""
        await self._wait()

    async def shutdown(self, **options: Any) -> ShutdownReport:
        """Shut down as the server would (``mode=``, ``drain_timeout=``); the report."""
        report: ShutdownReport = await self._shutdown(**options)
        return report

    @asynccontextmanager
    async def own_connection(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client of its own, closed (so disconnected, under Hypercorn) on exit.

        The in-process client already tells the app that the client has gone
        once the response is complete; it is returned as it is.
        """
        if self.how == "in-process":
            yield self.client
            return
        async with httpx.AsyncClient(base_url=self.client.base_url) as client:
            yield client


@asynccontextmanager
async def _in_process(app: ASGIApp, options: dict[str, Any]) -> AsyncIterator[Served]:
    async with open_client(app, **options) as client:
        yield Served("in-process", client, client.supervisor, client.wait_idle, client.shutdown)


@asynccontextmanager
async def _hypercorn(app: ASGIApp, options: dict[str, Any]) -> AsyncIterator[Served]:
    in_flight = InFlight(app)
    async with open_live_server(in_flight, **options) as server:

        async def wait_idle() -> None:
            # The batch runs inside the middleware's call, which wraps this
            # one: once no app call is in flight, each batch is either over or
            # known to the supervisor, whose wait_idle covers it.
            await in_flight.wait()
            await server.supervisor.wait_idle()

        async with httpx.AsyncClient(base_url=server.url) as client:
            yield Served("hypercorn", client, server.supervisor, wait_idle, server.shutdown)


ServeApp = Callable[..., AbstractAsyncContextManager[Served]]


@pytest.fixture(params=["in-process", "hypercorn"])
def serve(request: pytest.FixtureRequest) -> ServeApp:
    """``async with serve(app) as served:`` serves ``app`` one way or the other.

    Keyword arguments go to ``open_client`` or ``open_live_server``
    (``mode=``, ``drain_timeout=``).
    """
    opener = _in_process if request.param == "in-process" else _hypercorn

    def open_app(app: ASGIApp, **options: Any) -> AbstractAsyncContextManager[Served]:
        return opener(app, options)

    return open_app
