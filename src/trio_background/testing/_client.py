"""An in-process client that drives an ASGI app the way Hypercorn does.

httpx's ``ASGITransport`` (and Starlette's TestClient) return a response only
when the whole app call has returned, which is after every background task
has run: a test cannot see "the response came back while the email was still
being sent". This transport returns the response as soon as the app has sent
its final body message, and leaves the app call, and so the batch, running
in a nursery that the client owns, as Hypercorn's connection does.

It is as strict as Hypercorn's trio worker where an app can tell the
difference (``hypercorn/protocol/http_stream.py`` and ``h11.py``, whose
order :class:`_Stream` follows): the scope is the one Hypercorn builds
(ASGI spec 2.1, so Starlette streams in a child task); every write of the
response is a checkpoint whose cancellation point comes before the bytes go
out; the final body send puts ``http.disconnect`` in the app's queue and
checkpoints again before it returns, so a listener for the disconnect can
cancel the sender *after* the client has the whole response; bodies of
HEAD, 1xx, 204 and 304 responses are dropped; and a message the server does
not expect raises Hypercorn's ``UnexpectedMessageError``.
"""

from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import trio
from hypercorn.protocol.http_stream import ASGIHTTPState
from hypercorn.utils import UnexpectedMessageError, build_and_validate_headers, suppress_body

# The HTTP client Starlette's TestClient prefers: httpx2 (Python 3.11+), else httpx;
# both have the same API (httpx2 is httpx's successor).
if TYPE_CHECKING:
    import httpx
else:
    try:
        import httpx2 as httpx
    except ImportError:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - tested in a subprocess without either
            raise ImportError(
                "trio_background.testing.open_client is an httpx client, and neither httpx2 "
                "nor httpx is installed: pip install 'trio-background[testing]'"
            ) from exc

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

HTTPVersion = Literal["1.1", "2"]

# Hypercorn's config.max_app_queue_size default.
_APP_QUEUE_SIZE = 10


class _Stream:
    """One request, answered as Hypercorn's ``HTTPStream.app_send`` answers it."""

    def __init__(self, scope: MutableMapping[str, Any], body: bytes) -> None:
        self.scope = scope
        self.state = ASGIHTTPState.REQUEST
        self.status = 0  # until http.response.start
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.trailers = False
        self.done = trio.Event()
        self._to_app, self._app_queue = trio.open_memory_channel[Message](_APP_QUEUE_SIZE)
        # Hypercorn passes the body on as it arrives (Body events), then an
        # empty final chunk (EndBody).
        if body:
            self._to_app.send_nowait({"type": "http.request", "body": body, "more_body": True})
        self._to_app.send_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive(self) -> Message:
        # After the request body the app's queue is empty until the stream
        # closes; after the one http.disconnect, receive() waits forever.
        return await self._app_queue.receive()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        http2 = self.scope["http_version"] == "2"
        if kind == "http.response.start" and self.state is ASGIHTTPState.REQUEST:
            headers = build_and_validate_headers(message.get("headers", []))
            status = int(message["status"])
            await self._write(b"")
            self.status, self.headers = status, headers
            self.trailers = bool(message.get("trailers", False))
            self.state = ASGIHTTPState.RESPONSE
        elif kind == "http.response.body" and self.state is ASGIHTTPState.RESPONSE:
            data = bytes(message.get("body", b""))
            if data and not suppress_body(self.scope["method"], self.status):
                await self._write(data)
            if not message.get("more_body", False):
                if self.trailers:
                    self.state = ASGIHTTPState.TRAILERS
                else:
                    await self._close()
        elif kind == "http.response.trailers" and http2 and self.state is ASGIHTTPState.TRAILERS:
            if (b"te", b"trailers") in self.scope["headers"]:
                build_and_validate_headers(message.get("headers", []))
                await self._write(b"")
            if not message.get("more_trailers", False):
                await self._close()
        elif kind == "http.response.push" and http2:
            # httpx disables server push, so Hypercorn's push goes nowhere.
            if not isinstance(message["path"], str):
                raise TypeError(f"{message['path']} should be a str")
            await self._write(b"")
        elif kind == "http.response.early_hint" and http2 and self.state is ASGIHTTPState.REQUEST:
            await self._write(b"")  # a 103, which httpx reads past
        else:
            raise UnexpectedMessageError(self.state, kind)

    async def _write(self, data: bytes) -> None:
        # Hypercorn writes each event under the connection's send lock, whose
        # acquire is a cancellation point, then shielded: a write happens
        # whole or not at all, and is followed by a schedule point.
        await trio.lowlevel.checkpoint_if_cancelled()
        self.parts.append(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _close(self) -> None:
        # _send_closed: the end of the message goes out and the client has
        # its response...
        await trio.lowlevel.checkpoint_if_cancelled()
        self.state = ASGIHTTPState.CLOSED
        self.done.set()
        await trio.lowlevel.cancel_shielded_checkpoint()
        # ...then StreamClosed, still inside this send: http.disconnect goes
        # in the app's queue, and the connection is recycled (the idle timer
        # restarts under a lock: one more cancellation point).
        await self._to_app.send({"type": "http.disconnect"})
        await trio.lowlevel.checkpoint()

    def failed(self) -> None:
        """The app returned or raised: stop waiting for the response."""
        self.done.set()


class _Transport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        app: ASGIApp,
        nursery: trio.Nursery,
        state: dict[str, Any],
        http_version: HTTPVersion,
    ) -> None:
        self.app = app
        self.nursery = nursery
        self.state = state
        self.http_version = http_version
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()
        self.app_errors: list[Exception] = []

    def scope(self, request: httpx.Request) -> MutableMapping[str, Any]:
        """The scope Hypercorn's ``HTTPStream`` builds for ``request``."""
        url = request.url
        path, _, query_string = url.raw_path.partition(b"?")
        extensions: dict[str, object] = {}
        if self.http_version == "2":
            extensions = {
                "http.response.trailers": {},
                "http.response.push": {},
                "http.response.early_hint": {},
            }
        return {
            "type": "http",
            "http_version": self.http_version,
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": request.method,
            "scheme": url.scheme,
            "path": unquote(path.decode("ascii")),
            "raw_path": path,
            "query_string": query_string,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 50000),
            "server": (url.host, url.port or (443 if url.scheme == "https" else 80)),
            "state": self.state.copy(),
            "extensions": extensions,
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = _Stream(self.scope(request), await request.aread())
        failure: list[BaseException] = []

        async def run_app() -> None:
            try:
                await self.app(stream.scope, stream.receive, stream.send)
            except Exception as exc:
                if stream.done.is_set():
                    logger.error("the app raised after its response", exc_info=exc)
                    self.app_errors.append(exc)
                else:
                    failure.append(exc)
            finally:
                if not stream.done.is_set():
                    started = stream.state is not ASGIHTTPState.REQUEST
                    what = "completing" if started else "sending"
                    failure.append(RuntimeError(f"the app returned without {what} its response"))
                    stream.failed()
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()

        if self.in_flight == 0:
            self.idle = trio.Event()
        self.in_flight += 1
        self.nursery.start_soon(run_app)
        await stream.done.wait()
        if failure:
            raise failure[0]
        return httpx.Response(
            stream.status,
            headers=stream.headers,
            content=b"".join(stream.parts),
            request=request,
        )

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
    http_version: HTTPVersion = "1.1",
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
        http_version: The scope's ``http_version``, and what Hypercorn allows
            with it: ``"2"`` offers the trailers, push and early-hint
            extensions, as Hypercorn does over HTTP/2.

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
        transport = _Transport(middleware, nursery, state, http_version)
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
