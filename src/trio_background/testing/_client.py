"""An in-process client that drives an ASGI app the way Hypercorn does.

httpx's ``ASGITransport`` (and Starlette's TestClient) return a response only
when the whole app call has returned, which is after every background task
has run: a test cannot see "the response came back while the email was still
being sent". This transport returns the response as soon as the app has sent
its final body message, and leaves the app call, and so the batch, running
in a nursery that the client owns, as Hypercorn's connection does.
"""

from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

from .._asgi import ASGIApp, Message
from .._middleware import BackgroundTasksMiddleware

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, MutableMapping

    from .._records import ShutdownReport
    from .._supervisor import Mode, Supervisor

__all__ = ["BackgroundClient", "open_client"]

logger = logging.getLogger("trio_background.testing")


class _Transport(httpx.AsyncBaseTransport):
    def __init__(self, app: ASGIApp, nursery: trio.Nursery, state: dict[str, Any]) -> None:
        self.app = app
        self.nursery = nursery
        self.state = state
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()
        self.app_errors: list[Exception] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        scope: MutableMapping[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?")[0],
            "query_string": url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 50000),
            "server": (url.host, url.port or (443 if url.scheme == "https" else 80)),
            "state": dict(self.state),
            "extensions": {},
        }
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []
        done = trio.Event()
        failure: list[BaseException] = []
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            # A connected client: nothing more to read until the response ends.
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if done.is_set():
                return  # like a server whose client has its response already
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers.extend(message.get("headers", []))
            elif kind == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        async def run_app() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if done.is_set():
                    logger.error("the app raised after its response", exc_info=exc)
                    self.app_errors.append(exc)
                else:
                    failure.append(exc)
            finally:
                if not done.is_set():
                    what = "sending" if status is None else "completing"
                    failure.append(RuntimeError(f"the app returned without {what} its response"))
                    done.set()
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()

        if self.in_flight == 0:
            self.idle = trio.Event()
        self.in_flight += 1
        self.nursery.start_soon(run_app)
        await done.wait()
        if failure:
            raise failure[0]
        if status is None:  # pragma: no cover - done is set by a final body or a failure
            raise RuntimeError("the app sent a body before starting its response")
        return httpx.Response(status, headers=headers, content=b"".join(parts), request=request)

    async def wait_requests(self) -> None:
        while self.in_flight:
            await self.idle.wait()


class BackgroundClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` on an app, plus the app's background work.

    Make one with :func:`open_client`. Requests return as soon as the
    response is complete; the batch keeps running in the client's nursery.

    Attributes:
        middleware: The :class:`~trio_background.BackgroundTasksMiddleware` the app runs in.
        app_errors: Exceptions the app raised after completing a response.
    """

    def __init__(
        self, transport: _Transport, middleware: BackgroundTasksMiddleware, base_url: str
    ) -> None:
        super().__init__(transport=transport, base_url=base_url)
        self._bg_transport = transport
        self.middleware = middleware
        self.app_errors = transport.app_errors
        self.report: ShutdownReport | None = None

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor that runs the app's batches."""
        return self.middleware.supervisor

    async def wait_idle(self) -> None:
        """Return once no request is being handled and no batch is running."""
        while True:
            await self._bg_transport.wait_requests()
            await self.supervisor.wait_idle()
            if not self._bg_transport.in_flight:
                return

    async def shutdown(
        self, *, mode: Mode | None = None, drain_timeout: float | None = None
    ) -> ShutdownReport:
        """Shut down as the server would, and return the report.

        Sets the batch deadline (``mode`` and ``drain_timeout`` default to the
        middleware's), lets requests being handled finish (their batches get
        the same deadline), waits until every batch has ended, and returns the
        final :class:`~trio_background.ShutdownReport`. Calling it again returns the same
        report.
        """
        if self.report is None:
            self.supervisor.begin_shutdown(mode=mode, drain_timeout=drain_timeout)
            await self.wait_idle()
            self.report = self.supervisor.close()
        return self.report


class _Lifespan:
    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.to_app_send, self.to_app_receive = trio.open_memory_channel[Message](1)
        self.started = trio.Event()
        self.stopped = trio.Event()
        self.failure: str | None = None
        self.supported = True

    async def run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self.to_app_receive.receive, self._send)
        except Exception as exc:
            if not self.started.is_set():
                self.failure = f"{type(exc).__qualname__}: {exc}"
            else:
                raise
        finally:
            self.started.set()
            self.stopped.set()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.started.set()
        elif kind == "lifespan.startup.failed":
            self.failure = message.get("message", "")
            self.started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            self.stopped.set()

    async def startup(self) -> None:
        await self.to_app_send.send({"type": "lifespan.startup"})
        await self.started.wait()
        if self.failure is not None:
            raise RuntimeError(f"the app's lifespan startup failed: {self.failure}")

    async def shutdown(self) -> None:
        if not self.stopped.is_set():
            await self.to_app_send.send({"type": "lifespan.shutdown"})
            await self.stopped.wait()


@asynccontextmanager
async def open_client(
    app: ASGIApp,
    *,
    base_url: str = "http://testserver",
    mode: Mode | None = None,
    drain_timeout: float | None = None,
    lifespan: bool = True,
    raise_app_exceptions: bool = True,
) -> AsyncGenerator[BackgroundClient, None]:
    """Open an in-process :class:`BackgroundClient` on ``app``.

    Runs the app's lifespan startup, yields the client, and on exit shuts
    down (unless the test already did: ``mode`` and ``drain_timeout`` apply
    to that implicit shutdown) and runs lifespan shutdown.

    Args:
        app: Any ASGI app; it is wrapped in :class:`~trio_background.BackgroundTasksMiddleware`
            unless it is one (a middleware inside it defers to that one).
        base_url: The URL requests are relative to.
        mode: Shutdown mode on exit (None: the middleware's).
        drain_timeout: Drain timeout on exit (None: the middleware's).
        lifespan: Run the app's lifespan.
        raise_app_exceptions: Re-raise on exit what the app raised after
            completing a response (what Hypercorn would only log).

    Raises:
        RuntimeError: The app's lifespan startup failed.

    Cancellation:
        If the test body raises, the app's tasks are cancelled, not drained.
    """
    middleware = BackgroundTasksMiddleware.around(app)
    state: dict[str, Any] = {}
    # The body's exception is re-raised outside the nursery, so the test sees
    # it as it was raised, not wrapped in an exception group.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        span = _Lifespan(middleware, state)
        transport = _Transport(middleware, nursery, state)
        client = BackgroundClient(transport, middleware, base_url)
        try:
            if lifespan:
                nursery.start_soon(span.run)
                await span.startup()
            async with client:
                yield client
                await client.shutdown(mode=mode, drain_timeout=drain_timeout)
                if lifespan:
                    await span.shutdown()
        except BaseException as exc:
            error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    if raise_app_exceptions and client.app_errors:
        if len(client.app_errors) == 1:
            raise client.app_errors[0]
        raise ExceptionGroup("the app raised after completing responses", client.app_errors)
