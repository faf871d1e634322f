"""The ASGI middleware: one batch per HTTP request, run after its response.

The one hard idea: Hypercorn runs each request's app call in a task of the
connection's task group, and considers the response sent as soon as the
final body message is sent, while the app call may go on. So the batch runs
*in the request's own task*, in a nursery opened there once the response is
complete: the client already has its response (and its keep-alive
connection serves the next request), while the batch stays a child of the
connection, and of the server, so nothing outlives the server and shutdown
can reach it.

"Complete" means the final ``http.response.body`` (or the last trailers) was
handed to the server. Hypercorn delivers ``http.disconnect`` from inside that
very send, and Starlette's streaming and file responses then cancel the
sending task while it is still in the send, which would leave the response
incomplete in our eyes and Hypercorn's connection unrecycled. So the final
send is shielded for a moment (a large body's bulk goes first, unshielded):
the server finishes it, and the app's cancellation lands just after.

Under FastAPI the batch runs from the request's exit stack, just before its
``yield`` dependencies close (as in FastAPI >= 0.118); elsewhere, after the
app call returned. Every other scope type passes through, except
``lifespan``, which the middleware watches to start and close its supervisor
(and, under asyncio, to refuse to start).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import sniffio
import trio

from ._asgi import EXCHANGE_KEY, MIDDLEWARE_KEY, ASGIApp, Message, Receive, Scope, Send
from ._runner import hand_off, in_trio_or_from_thread, run_flight
from ._supervisor import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_KEEP_RECORDS,
    DEFAULT_THREAD_LIMIT,
    Mode,
    Supervisor,
)
from ._tasks import BackgroundTasks, TaskState, adopting

if TYPE_CHECKING:
    from collections.abc import Iterable
    from contextlib import AsyncExitStack
    from types import TracebackType

    from ._backend import DurableBackend
    from ._observe import TaskObserver
    from ._runner import ErrorHook, Flight, OnError, Policy
    from ._tasks import BackgroundTask

__all__ = ["BackgroundTasksMiddleware", "from_scope", "supervisor_from_scope"]

logger = logging.getLogger("trio_background")

_NOT_TRIO = (
    "trio-background runs background tasks in trio nurseries, but this server runs "
    "{library}: serve the app with Hypercorn's trio worker (hypercorn --worker-class trio "
    "module:app) or with trio_background.serve() / python -m trio_background module:app"
)

# A final body up to this size is sent in one shielded send; a larger one is
# sent in two, the bulk unshielded. The grace bounds the shielded send.
_SHIELDED_BODY = 64 * 1024
_FINAL_SEND_GRACE = 1.0

_UNAVAILABLE = (
    b"503 Service Unavailable: the background work of this request could not be stored, "
    b"so the request was not accepted; try again later\n"
)


def check_trio() -> None:
    """Raise RuntimeError naming the fix if the running loop is not trio's."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "no known async library"
    if library != "trio":
        raise RuntimeError(_NOT_TRIO.format(library=library))


def _request_label(scope: Scope) -> str:
    return f"{scope.get('method', '?')} {scope.get('path', '?')}"


class _Exchange:
    """One HTTP request: wraps ``send`` to see the response complete.

    It is the only object the middleware allocates for a request that adds no
    task; the batch (a flight of the supervisor) is opened on first use.
    """

    __slots__ = (
        "_batch",
        "_send",
        "_streamed",
        "_trailers",
        "complete",
        "error_response",
        "flight",
        "policy",
        "refused",
        "scope",
        "stack",
        "supervisor",
    )

    def __init__(self, send: Send, supervisor: Supervisor, scope: Scope) -> None:
        self._send = send
        self.supervisor = supervisor
        self.scope = scope
        self.policy: Policy = supervisor.policy
        self._batch: BackgroundTasks | None = None
        self.flight: Flight | None = None
        self.stack: AsyncExitStack | None = None
        self._trailers = False
        self._streamed = False
        self.complete = False
        self.error_response: str | None = None
        self.refused: str | None = None

    @property
    def batch(self) -> BackgroundTasks:
        batch = self._batch
        if batch is None:
            # The supervisor hears of it at its first task (added() below): a
            # request that asks for its batch and adds nothing makes none.
            batch = self._batch = BackgroundTasks()
            batch._owner = self  # pyright: ignore[reportPrivateUsage]
        return batch

    # The batch's owner until its first task: then the supervisor's flight.
    def added(self, task: BackgroundTask) -> None:
        if self.flight is None and self._batch is not None:
            in_trio_or_from_thread(self._open)

    def _open(self) -> None:
        if self.flight is None:
            self.flight = self.supervisor._open(  # pyright: ignore[reportPrivateUsage]
                _request_label(self.scope), self.policy, batch=self._batch
            )

    def use_policy(self, supervisor: Supervisor) -> None:
        """An inner, configured middleware's options apply to this request."""
        self.policy = supervisor.policy
        if self.flight is not None:
            self.flight.policy = supervisor.policy

    # The _Adopter protocol: Starlette's Response(background=task) awaits a
    # task after the response is complete; it joins the batch instead.
    def adopt(self, task: BackgroundTask) -> bool:
        if not self.complete or self.refused is not None or task.state is not TaskState.PENDING:
            return False
        if self.flight is not None and (self.flight.running or self.flight.closed):
            return False
        batch = self.batch
        if batch._closed is not None:  # pyright: ignore[reportPrivateUsage]
            return False
        batch._append(task)  # pyright: ignore[reportPrivateUsage]
        return True

    def owns(self, batch: BackgroundTasks) -> bool:
        return self._batch is batch

    def close(self) -> None:
        """The app has returned: let go of the server's ``send``.

        The server's send is usually a bound method of an object that holds
        the scope, which holds this exchange: a reference cycle per request,
        left to the garbage collector (and its pauses) unless broken here;
        the scope holds this exchange too.
        """
        self._send = _send_after_return
        self.scope = _NO_SCOPE

    async def __call__(self, message: Message) -> None:
        if self.refused is not None:
            return  # a 503 went out instead of the app's response
        kind = message["type"]
        final = False
        if kind == "http.response.body":
            final = not self._trailers and not message.get("more_body", False)
        elif kind == "http.response.start":
            self._trailers = bool(message.get("trailers", False))
            handling = sys.exc_info()[1]
            if handling is not None:
                # Sent while an exception is being handled: an exception
                # handler's response (HTTPException included); the app failed.
                self.error_response = type(handling).__qualname__
            elif self.flight is not None and not await self._hand_off():
                return
        elif kind == "http.response.trailers":
            final = not message.get("more_trailers", False)
        elif kind == "http.response.pathsend":
            final = True
        elif kind == "http.response.zerocopysend":
            final = not message.get("more_body", False)
        if not final:
            if kind != "http.response.start":
                self._streamed = True  # a part of the body (or trailers) before the last
            await self._send(message)
            return
        if self.flight is None and not self._streamed:
            # One body and no batch: no framework cancels such a send, and if
            # something did, no task would be lost; the shield below costs
            # about 5 us, which every request without tasks would pay.
            await self._send(message)
            self._completed()
            return
        body = message.get("body", b"") if kind == "http.response.body" else b""
        if len(body) > _SHIELDED_BODY:
            # The bulk may wait on a slow client: send it as it is, cancellable.
            await self._send({**message, "more_body": True})
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        # The final send is shielded (for a moment): if the app cancels it
        # halfway, as Starlette's streaming responses do when Hypercorn
        # delivers http.disconnect from inside it, Hypercorn leaves the
        # connection unrecycled until its graceful timeout. Handed over once
        # the server's send returned or was cut by the grace deadline; an
        # error raised by the server's send means it was not.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _FINAL_SEND_GRACE):
            try:
                await self._send(message)
            except trio.Cancelled:
                self._completed()
                raise
        self._completed()

    async def _hand_off(self) -> bool:
        """Store the durable tasks before the first byte leaves; False if refused."""
        flight = self.flight
        if flight is None or flight.policy.backend is None:
            return True
        durable = [
            task
            for task in flight.batch.tasks
            if task.state is TaskState.PENDING and task._durable  # pyright: ignore[reportPrivateUsage]
        ]
        if not durable or await hand_off(flight, durable):
            return True
        self.refused = (
            "the durable backend could not store this request's durable tasks, so the "
            "client got 503"
        )
        await self._send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_UNAVAILABLE)).encode()),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": _UNAVAILABLE})
        return False

    def _completed(self) -> None:
        if self.complete:
            return
        self.complete = True
        observers = self.supervisor._observers  # pyright: ignore[reportPrivateUsage]
        if observers:
            observers.response_complete(self.scope)
        stack = self.stack
        if stack is not None and self.flight is not None:
            if _holds_callbacks(stack):
                stack.push_async_exit(self._run_from_stack)
            else:
                # No yield dependency to keep open: the batch runs from the
                # middleware once FastAPI has returned, and a pending batch
                # keeps none of FastAPI's frames alive (about half its memory).
                self.stack = None

    async def _run_from_stack(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        # FastAPI's request exit stack is closing: the response was sent, the
        # yield dependencies are still open. Run the batch now, unless the
        # app is failing (the middleware then records the batch skipped).
        if exc_type is None:
            flight = self.to_run()
            if flight is not None:
                await run_flight(flight)
        return False

    def to_run(self) -> Flight | None:
        """The batch to run now if the response is complete, else None (recorded skipped).

        Not a coroutine itself, so that a pending batch keeps no frame of it.
        """
        flight = self.flight
        if flight is None or flight.running or flight.closed:
            return None
        supervisor = self.supervisor
        if self.refused is not None:
            supervisor._skip(flight, self.refused)  # pyright: ignore[reportPrivateUsage]
        elif self.error_response is not None:
            supervisor._skip(  # pyright: ignore[reportPrivateUsage]
                flight,
                f"the app raised {self.error_response} and an exception handler sent the response",
            )
        elif not self.complete:
            supervisor._skip(flight, "the app returned without completing its response")  # pyright: ignore[reportPrivateUsage]
        else:
            return flight
        return None

    def defer_to(self, stack: AsyncExitStack) -> None:
        """Run the batch from ``stack`` (FastAPI's request exit stack) as it closes."""
        self.stack = stack


_NO_SCOPE: Scope = {}


def _holds_callbacks(stack: AsyncExitStack) -> bool:
    """Whether ``stack`` has exit callbacks (True when that cannot be told)."""
    callbacks = getattr(stack, "_exit_callbacks", None)
    return callbacks is None or len(callbacks) > 0


async def _send_after_return(message: Message) -> None:
    raise RuntimeError(
        f"the app sent {message.get('type')!r} after its call returned: keep a "
        "request's send to the request"
    )


def exchange_from_scope(scope: Scope) -> _Exchange:
    """The request's exchange; RuntimeError naming the fix when there is none."""
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
    return exchange_from_scope(scope).batch


def supervisor_from_scope(scope: Scope) -> Supervisor:
    """The supervisor that runs the batches of the request ``scope`` belongs to.

    For endpoints that look tasks up (``supervisor.task(task_id)``) or show
    the supervisor's state; in Starlette or FastAPI, pass ``request.scope``.

    Raises:
        RuntimeError: As :func:`from_scope`.
    """
    return exchange_from_scope(scope).supervisor


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
        backend: A durable backend: tasks of its registered functions are
            handed off to it before the response starts.
        spill: At the drain deadline, hand off tasks of registered
            functions that have not started.
        observers: :class:`TaskObserver` instances (metrics, traces).
        supervisor: Use this supervisor instead of making one from the
            options above (which must then be left out).

    Raises:
        TypeError: ``supervisor`` is given together with other options.

    Error handling:
        A batch runs only when the inner app completed its response. If the
        app raised, returned without completing the response, or its response
        came from an exception handler (``HTTPException`` included), its
        tasks end ``skipped`` with the reason, and the app's exception
        propagates as before. No task's exception ever leaves the middleware.

    Nesting:
        When another BackgroundTasksMiddleware is outside this one (one that
        :func:`serve` or the test client added), the outer one owns the
        batches, and this one's options (``on_error``, ``error_hook``,
        ``backend``, ``spill``, observers) apply to the requests that reach
        it, whether or not a lifespan did; at lifespan startup the outer one
        also adopts this one's supervisor (mode, drain timeout, limits).
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
        backend: DurableBackend | None = None,
        spill: bool = False,
        observers: Iterable[TaskObserver] = (),
        supervisor: Supervisor | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"BackgroundTasksMiddleware wraps an ASGI app, got {type(app).__qualname__}; "
                "pass the app: BackgroundTasksMiddleware(app)"
            )
        self.app = app
        observers = tuple(observers)
        options: dict[str, Any] = {
            "mode": mode,
            "drain_timeout": drain_timeout,
            "on_error": on_error,
            "error_hook": error_hook,
            "thread_limit": thread_limit,
            "keep_records": keep_records,
            "backend": backend,
            "spill": spill,
            "observers": observers,
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
            self.supervisor = Supervisor(**options)
        self._trio_checked = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            outer = scope.get(EXCHANGE_KEY)
            if isinstance(outer, _Exchange):
                # An outer middleware owns this request's batch: our options apply.
                if self._configured and outer.supervisor is not self.supervisor:
                    outer.use_policy(self.supervisor)
                    for observer in self.supervisor._observers._items:  # pyright: ignore[reportPrivateUsage]
                        outer.supervisor.add_observer(observer)
                await self.app(scope, receive, send)
                return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        else:
            await self.app(scope, receive, send)
            return
        # An HTTP request of ours, here rather than in a method of its own: a
        # pending batch keeps every frame between the server and its tasks.
        if not self._trio_checked:
            check_trio()
            self._trio_checked = True
        exchange = _Exchange(send, self.supervisor, scope)
        scope[EXCHANGE_KEY] = exchange
        token = adopting.set(exchange)
        try:
            await self.app(scope, receive, exchange)
        except BaseException as exc:
            exchange.close()
            flight = exchange.flight
            if flight is not None and not flight.running and not flight.closed:
                self.supervisor._skip(  # pyright: ignore[reportPrivateUsage]
                    flight,
                    f"the app raised {type(exc).__qualname__} while handling the request",
                )
            raise
        finally:
            adopting.reset(token)
        exchange.close()
        if exchange.flight is not None:
            flight = exchange.to_run()
            if flight is not None:
                await run_flight(flight)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        outer = scope.get(MIDDLEWARE_KEY)
        if isinstance(outer, BackgroundTasksMiddleware):
            if self._configured:
                outer._adopt(self.supervisor)  # pyright: ignore[reportPrivateUsage]
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

    def _adopt(self, supervisor: Supervisor) -> None:
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

    async def _receive(self) -> Message:
        message = await self.receive()
        self.read_any = True
        if message["type"] == "lifespan.startup":
            await self._open_backend()
        elif message["type"] == "lifespan.shutdown":
            await self._close()
        return message

    async def _open_backend(self) -> None:
        backend = self.middleware.supervisor.backend
        if backend is not None:
            await backend.open()

    async def _close(self) -> None:
        supervisor = self.middleware.supervisor
        supervisor.close(cause="lifespan shutdown")
        backend = supervisor.backend
        if backend is not None:
            try:
                await backend.aclose()
            except Exception:
                logger.exception("the durable backend failed to close")

    async def run(self) -> None:
        try:
            check_trio()
        except RuntimeError as exc:
            message = await self.receive()
            if message["type"] == "lifespan.startup":
                await self.send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise
        self.middleware._trio_checked = True  # pyright: ignore[reportPrivateUsage]
        self.middleware.supervisor.start()
        try:
            await self.middleware.app(self.scope, self._receive, self.send)
        except Exception:
            if self.read_any:
                raise
        else:
            if self.read_any:
                return
        # Raised or returned before reading: the app does not support lifespan.
        logger.debug("the app does not support lifespan; trio-background answers it")
        await self._answer_alone()

    async def _answer_alone(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "lifespan.startup":
                self.middleware.supervisor.start()
                await self._open_backend()
                await self.send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close()
                await self.send({"type": "lifespan.shutdown.complete"})
                return
