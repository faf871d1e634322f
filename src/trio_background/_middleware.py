"""The ASGI middleware: one batch per HTTP request, run after its response.

The one hard idea: Hypercorn runs each request's app call in a task of the
connection's task group, and considers the response sent as soon as the
final body message is sent, while the app call may go on. So the middleware
runs the batch *in the request's own task*, after the inner app returned:
the client already has its response (and its keep-alive connection serves
the next request), while the batch stays a child of the connection, and of
the server, so nothing outlives the server and shutdown can reach it.

Every other scope type passes through, except ``lifespan``, which the
middleware watches to start and close its supervisor (and, under asyncio,
to refuse to start).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import sniffio

from ._supervisor import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_KEEP_RECORDS,
    DEFAULT_THREAD_LIMIT,
    Mode,
    Supervisor,
)

if TYPE_CHECKING:
    from ._runner import ErrorHook, OnError
    from ._tasks import BackgroundTasks

__all__ = ["BackgroundTasksMiddleware", "from_scope", "supervisor_from_scope"]

logger = logging.getLogger("trio_background")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Keys this library puts in ASGI scopes. The exchange key marks an HTTP
# request whose batch an (outer) middleware owns; the middleware key marks a
# lifespan scope that a middleware already watches.
EXCHANGE_KEY = "trio_background.exchange"
MIDDLEWARE_KEY = "trio_background.middleware"

_NOT_TRIO = (
    "trio-background runs background tasks in trio nurseries, but this server runs "
    "{library}: serve the app with Hypercorn's trio worker (hypercorn --worker-class trio "
    "module:app) or with trio_background.serve() / python -m trio_background module:app"
)


def check_trio() -> None:
    """Raise RuntimeError naming the fix if the running loop is not trio's."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "no known async library"
    if library != "trio":
        raise RuntimeError(_NOT_TRIO.format(library=library))


class _Exchange:
    """One HTTP request: wraps ``send`` to see the response complete.

    It is the only object the middleware allocates for a request that adds no
    task; the batch is made on first use.
    """

    __slots__ = ("_batch", "_send", "_supervisor", "_trailers", "complete")

    def __init__(self, send: Send, supervisor: Supervisor) -> None:
        self._send = send
        self._supervisor = supervisor
        self._batch: BackgroundTasks | None = None
        self._trailers = False
        self.complete = False

    @property
    def batch(self) -> BackgroundTasks:
        if self._batch is None:
            self._batch = self._supervisor.open_batch()
        return self._batch

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor

    @property
    def has_tasks(self) -> bool:
        return self._batch is not None and bool(self._batch.tasks)

    def close(self) -> None:
        """The app has returned: let go of the server's ``send``.

        The server's send is usually a bound method of an object that holds
        the scope, which holds this exchange: a reference cycle per request,
        left to the garbage collector (and its pauses) unless broken here.
        """
        self._send = _send_after_return

    async def __call__(self, message: Message) -> None:
        await self._send(message)
        kind = message["type"]
        if kind == "http.response.body":
            if not self._trailers and not message.get("more_body", False):
                self.complete = True
        elif kind == "http.response.start":
            self._trailers = bool(message.get("trailers", False))
        elif kind == "http.response.trailers":
            if not message.get("more_trailers", False):
                self.complete = True
        elif kind == "http.response.pathsend":
            self.complete = True
        elif kind == "http.response.zerocopysend":
            if not message.get("more_body", False):
                self.complete = True


async def _send_after_return(message: Message) -> None:
    raise RuntimeError(
        f"the app sent {message.get('type')!r} after its call returned: keep a "
        "request's send to the request"
    )


def _exchange(scope: Scope) -> _Exchange:
    exchange = scope.get(EXCHANGE_KEY)
    if isinstance(exchange, _Exchange):
        return exchange
    if scope.get("type") != "http":
        raise RuntimeError(
            f"only HTTP requests have background tasks, and this is a {scope.get('type')!r} scope"
        )
    raise RuntimeError(
        "this request has no background tasks batch: BackgroundTasksMiddleware is not "
        "installed. Add it with app.add_middleware(BackgroundTasksMiddleware) "
        "(Starlette, FastAPI), or wrap the ASGI app: app = BackgroundTasksMiddleware(app)"
    )


def from_scope(scope: Scope) -> BackgroundTasks:
    """The batch of the HTTP request that ``scope`` belongs to.

    Use it in a raw ASGI app, or in a Starlette endpoint as
    ``from_scope(request.scope)``.

    Raises:
        RuntimeError: The scope has no batch: the middleware is not installed,
            or the scope is not an HTTP request.
    """
    return _exchange(scope).batch


def supervisor_from_scope(scope: Scope) -> Supervisor:
    """The supervisor that runs the batches of the request ``scope`` belongs to.

    For endpoints that look tasks up (``supervisor.task(task_id)``) or show
    the supervisor's state; in Starlette or FastAPI, pass ``request.scope``.

    Raises:
        RuntimeError: As :func:`from_scope`.
    """
    return _exchange(scope).supervisor


def _request_label(scope: Scope) -> str:
    return f"{scope.get('method', '?')} {scope.get('path', '?')}"


class BackgroundTasksMiddleware:
    """ASGI middleware that runs each request's batch after its response.

    Use ``app.add_middleware(BackgroundTasksMiddleware, ...)`` in Starlette
    or FastAPI, or wrap any ASGI app: ``app = BackgroundTasksMiddleware(app)``.

    Args:
        app: The ASGI app to wrap.
        mode: Shutdown mode, ``"drain"`` or ``"cancel"`` (see
            :class:`Supervisor`).
        drain_timeout: Seconds a drain may take.
        on_error: ``"continue"`` or ``"stop"`` after a failed task.
        error_hook: Called with ``(record, exception)`` for each failed task.
        thread_limit: Sync tasks running in threads at once.
        keep_records: Recent records kept per final state.
        supervisor: Use this supervisor instead of making one from the
            options above (which must then be left out).

    Raises:
        TypeError: ``supervisor`` is given together with other options.

    Error handling:
        A batch runs only when the inner app completed its response and
        returned. If the app raised, or returned without completing the
        response, its tasks end ``skipped`` with the reason, and the app's
        exception propagates as before. No task's exception ever leaves the
        middleware.

    Nesting:
        When another BackgroundTasksMiddleware is outside this one (one that
        :func:`serve` or the test client added), the outer one owns the
        batches; if this one was configured, the outer one adopts this
        one's supervisor at lifespan startup, so its options still apply.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        mode: Mode = "drain",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        on_error: OnError = "continue",
        error_hook: ErrorHook | None = None,
        thread_limit: int = DEFAULT_THREAD_LIMIT,
        keep_records: int = DEFAULT_KEEP_RECORDS,
        supervisor: Supervisor | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"BackgroundTasksMiddleware wraps an ASGI app, got {type(app).__qualname__}; "
                "pass the app: BackgroundTasksMiddleware(app)"
            )
        self.app = app
        options = {
            "mode": mode,
            "drain_timeout": drain_timeout,
            "on_error": on_error,
            "error_hook": error_hook,
            "thread_limit": thread_limit,
            "keep_records": keep_records,
        }
        defaults = Supervisor.__init__.__kwdefaults__ or {}
        self._configured = any(options[k] != defaults[k] for k in options)
        if supervisor is not None:
            if self._configured:
                raise TypeError(
                    "pass either supervisor= or the supervisor's options, not both: "
                    "the options belong to the Supervisor(...) you pass"
                )
            self._configured = True
            self.supervisor = supervisor
        else:
            self.supervisor = Supervisor(
                mode=mode,
                drain_timeout=drain_timeout,
                on_error=on_error,
                error_hook=error_hook,
                thread_limit=thread_limit,
                keep_records=keep_records,
            )
        self.trio_checked = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if EXCHANGE_KEY in scope:
                # An outer middleware owns this request's batch.
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.trio_checked:
            check_trio()
            self.trio_checked = True
        exchange = _Exchange(send, self.supervisor)
        scope[EXCHANGE_KEY] = exchange
        try:
            await self.app(scope, receive, exchange)
        except BaseException as exc:
            exchange.close()
            if exchange.has_tasks:
                self.supervisor.skip(
                    exchange.batch,
                    request=_request_label(scope),
                    reason=f"the app raised {type(exc).__qualname__} while handling the request",
                )
            raise
        exchange.close()
        if exchange.has_tasks:
            if exchange.complete:
                await self.supervisor.run(exchange.batch, request=_request_label(scope))
            else:
                self.supervisor.skip(
                    exchange.batch,
                    request=_request_label(scope),
                    reason="the app returned without completing its response",
                )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        outer = scope.get(MIDDLEWARE_KEY)
        if isinstance(outer, BackgroundTasksMiddleware):
            if self._configured:
                outer.adopt(self.supervisor)
            await self.app(scope, receive, send)
            return
        scope[MIDDLEWARE_KEY] = self
        await _Lifespan(self, scope, receive, send).run()

    @classmethod
    def around(cls, app: ASGIApp) -> BackgroundTasksMiddleware:
        """``app`` itself if it is a middleware already, else ``app`` wrapped in one.

        What :func:`serve` and the testing tools use to own the outermost one.
        """
        return app if isinstance(app, BackgroundTasksMiddleware) else cls(app)

    def adopt(self, supervisor: Supervisor) -> None:
        """Use an inner middleware's supervisor (called at lifespan startup)."""
        self.supervisor = supervisor


class _Lifespan:
    """Watches a lifespan: checks for trio, starts and closes the supervisor.

    An inner app that raises before it reads the first message does not
    support lifespan (many raw ASGI apps); the middleware then answers the
    server itself, so the report is still made at shutdown.
    """

    def __init__(
        self, middleware: BackgroundTasksMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.receive = receive
        self.send = send
        self.read_any = False
        self.startup_done = False

    async def _receive(self) -> Message:
        message = await self.receive()
        self.read_any = True
        if message["type"] == "lifespan.shutdown":
            self.middleware.supervisor.close()
        return message

    async def _send(self, message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            self.startup_done = True
        await self.send(message)

    async def run(self) -> None:
        try:
            check_trio()
        except RuntimeError as exc:
            message = await self.receive()
            if message["type"] == "lifespan.startup":
                await self.send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise
        self.middleware.trio_checked = True
        self.middleware.supervisor.start()
        try:
            await self.middleware.app(self.scope, self._receive, self._send)
        except Exception:
            if self.read_any:
                raise
            logger.debug("the app does not support lifespan; trio-background answers it")
            await self._answer_alone()

    async def _answer_alone(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "lifespan.startup":
                self.middleware.supervisor.start()
                await self.send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.middleware.supervisor.close()
                await self.send({"type": "lifespan.shutdown.complete"})
                return
