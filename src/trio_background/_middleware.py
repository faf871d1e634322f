"""The ASGI middleware: one batch per HTTP request, run after its response.

The one hard idea: Hypercorn runs each request's app call in a task of the
connection's task group, and considers the response sent as soon as the
final body message is sent, while the app call may go on. So the batch runs
*in the request's own task*, in a nursery opened there once the response is
complete: the client already has its response (and its keep-alive
connection serves the next request), while the batch stays a child of the
connection, and of the server, so nothing outlives the server and shutdown
can reach it.

"Over" means the final ``http.response.body`` (or the last trailers, or
``http.response.pathsend``) was handed to the server, or the client went
away while the app was still sending (the usual end of a server-sent events
stream). Hypercorn delivers ``http.disconnect`` from inside the final send,
and Starlette's streaming and file responses then cancel the sending task
while it is still in the send, which would leave Hypercorn's connection
unrecycled. So the final send is shielded (a large body's bulk goes first,
unshielded) until the server's own cut after the shutdown deadline, never for
a fixed time: a loop paused for seconds must not tear a send. Only what the
app call itself raised before its response was over skips the batch (its
cleanups still run).

Under FastAPI the batch runs from the request's exit stack, just before its
``yield`` dependencies close (as in FastAPI >= 0.118); elsewhere, after the
app call returned. A websocket connection gets a batch too (``Connection``).
Every other scope type passes through, except ``lifespan``, which the
middleware watches to start and close its supervisor, and around which it
opens the supervisor's own nursery (and, under asyncio, refuses to start).
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import sniffio
import trio

from ._asgi import EXCHANGE_KEY, MIDDLEWARE_KEY, ASGIApp, Message, Receive, Scope, Send
from ._board import CUT_MARGIN
from ._foreign import ServerShutdownWatch, server_shutdown_watch
from ._runner import Runner
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
    from ._runner import ErrorHook, OnError, Policy
    from ._tasks import BackgroundTask

__all__ = ["BackgroundTasksMiddleware", "from_scope", "supervisor_from_scope"]

logger = logging.getLogger("trio_background")

_NOT_TRIO = (
    "trio-background runs background tasks in trio nurseries, but this server runs "
    "{library}: serve the app with Hypercorn's trio worker (hypercorn --worker-class trio "
    "module:app; anycorn --worker-class trio module:app) or with trio_background.serve() / "
    "python -m trio_background module:app; "
    'in tests, run the test client on trio: TestClient(app, backend="trio"), or an '
    'anyio_backend fixture that returns "trio"'
)

# A final body up to this size is sent in one shielded send; a larger one is
# sent in two, the bulk unshielded.
_SHIELDED_BODY = 64 * 1024

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


class Exchange:
    """One HTTP request: sees its response end, and hands its batch to the runner.

    It wraps ``send`` (the final message, the durable 503) and ``receive``
    (the client leaving). The batch and its runner are made on first use:
    a request that never asks for its batch costs this object alone.
    """

    __slots__ = (
        "__weakref__",
        "_batch",
        "_receive",
        "_send",
        "_streamed",
        "_trailers",
        "board",
        "client_gone",
        "complete",
        "middleware",
        "policy",
        "refused",
        "runner",
        "scope",
        "stack",
    )

    def __init__(
        self, send: Send, receive: Receive, middleware: BackgroundTasksMiddleware, scope: Scope
    ) -> None:
        self._send = send
        self._receive = receive
        self.middleware = middleware
        self.board = middleware.supervisor.board
        self.scope = scope
        self.policy: Policy = middleware.supervisor.policy
        self._batch: BackgroundTasks | None = None
        self.runner: Runner | None = None
        self.stack: AsyncExitStack | None = None
        self._trailers = False
        self._streamed = False
        self.complete = False
        self.client_gone = False
        self.refused: str | None = None

    @property
    def batch(self) -> BackgroundTasks:
        batch = self._batch
        if batch is None:
            batch = self._batch = BackgroundTasks()
            self.runner = Runner(batch, self.board, self.policy, _request_label(self.scope))
        return batch

    @property
    def over(self) -> bool:
        """Whether the response is over: handed to the server, or the client left."""
        return self.complete or self.client_gone

    def use(self, policy: Policy) -> None:
        """An inner (mounted) middleware's options apply to this request."""
        self.policy = policy
        if self.runner is not None:
            self.runner.policy = policy

    # Starlette's Response(background=task) awaits a task after the response
    # is complete: it joins the batch instead.
    def adopt(self, task: BackgroundTask) -> bool:
        if not self.complete or self.refused is not None or task.state is not TaskState.PENDING:
            return False
        runner = self.runner
        if runner is not None and not runner.is_open:
            return False
        self.batch.append(task)
        return True

    def owns(self, batch: BackgroundTasks) -> bool:
        return self._batch is batch

    def app_failed(self, reason: str) -> None:
        """The handler raised (a framework's hook saw it): only cleanups will run."""
        if self.runner is not None:
            self.runner.app_failed(reason)

    def close(self) -> None:
        """The app has returned: let go of the server's ``send`` and ``receive``.

        They are usually bound methods of objects that hold the scope, which
        holds this exchange: a reference cycle per request, left to the
        garbage collector (and its pauses) unless broken here.
        """
        self._send = _send_after_return
        self._receive = _receive_after_return
        self.scope = _NO_SCOPE

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.complete:
            self.client_gone = True
        return message

    async def __call__(self, message: Message) -> None:
        if self.refused is not None:
            return  # a 503 went out instead of the app's response
        kind = message["type"]
        final = False
        if kind == "http.response.body":
            final = not self._trailers and not message.get("more_body", False)
        elif kind == "http.response.start":
            self._trailers = bool(message.get("trailers", False))
            runner = self.runner
            if runner is not None and runner.policy.backend is not None:
                if not await self._hand_off(runner):
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
            try:
                await self._send(message)
            except OSError:
                self.client_gone = True  # the server says the client left
                raise
            return
        if self.runner is None and not self._streamed:
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
        # The final send is shielded: if the app cancels it halfway, as
        # Starlette's streaming responses do when Hypercorn delivers
        # http.disconnect from inside it, Hypercorn leaves the connection
        # unrecycled. The shield lasts until the server cuts the requests in
        # flight, a moment after the shutdown deadline (the board moves it
        # there), never a fixed time: a loop paused for seconds must not cut
        # a send halfway. Handed over once the server's send returned
        # or the deadline cut it; an error raised by the send means it was not.
        shield = trio.CancelScope(shield=True, deadline=self.board.deadline + CUT_MARGIN)
        shields = self.board.shields
        shields.add(shield)
        try:
            with shield:
                try:
                    await self._send(message)
                except trio.Cancelled:
                    self._completed()
                    raise
        finally:
            shields.discard(shield)
        self._completed()

    async def _hand_off(self, runner: Runner) -> bool:
        """Store the durable tasks before the first byte leaves; False if refused."""
        durable = runner.durable_pending()
        if not durable or await runner.hand_off(durable):
            return True
        self.refused = (
            "the durable backend could not store this request's durable tasks, so the "
            "client got 503"
        )
        runner.app_failed(self.refused)
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
        observers = self.policy.observers
        if observers.items:
            observers.response_complete(self.scope)
        stack = self.stack
        if stack is not None and self.runner is not None:
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
        # app is failing (the middleware then runs only its cleanups).
        if exc_type is None:
            runner = self.to_run()
            if runner is not None:
                await runner.run()
        return False

    def to_run(self) -> Runner | None:
        """The runner to run now, after the app returned; None if there is none (or it ran).

        Not a coroutine itself, so that a pending batch keeps no frame of it.
        """
        runner = self.runner
        if runner is None:
            return None
        if not self.over and self.refused is None:
            runner.app_failed("the app returned without completing its response")
        return runner

    def defer_to(self, stack: AsyncExitStack) -> None:
        """Run the batch from ``stack`` (FastAPI's request exit stack) as it closes."""
        self.stack = stack


_NO_SCOPE: Scope = {}


def _holds_callbacks(stack: AsyncExitStack) -> bool:
    """Whether ``stack`` has exit callbacks (True when that cannot be told)."""
    callbacks = getattr(stack, "_exit_callbacks", None)
    return callbacks is None or len(callbacks) > 0


async def _receive_after_return() -> Message:
    return {"type": "http.disconnect"}


async def _send_after_return(message: Message) -> None:
    raise RuntimeError(
        f"the app sent {message.get('type')!r} after its call returned: keep a "
        "request's send to the request"
    )


class Connection:
    """One websocket connection: its batch, whose ``start_soon`` tasks run at once.

    The runner runs beside the app's call, in a nursery around it: the
    ``start_soon`` tasks start as they are added, the ``add_task`` sequence
    (and the cleanups) once the connection's app call has returned.
    """

    __slots__ = ("__weakref__", "batch", "middleware", "runner")

    def __init__(self, middleware: BackgroundTasksMiddleware, scope: Scope) -> None:
        self.middleware = middleware
        self.batch = BackgroundTasks()
        self.runner = Runner(
            self.batch,
            middleware.supervisor.board,
            middleware.supervisor.policy,
            f"WEBSOCKET {scope.get('path', '?')}",
        )
        self.runner.hold_sequence()

    def app_failed(self, reason: str) -> None:
        self.runner.app_failed(reason)

    def defer_to(self, stack: AsyncExitStack) -> None:
        """FastAPI's exit stack: a connection's sequence runs when it closes, whatever it holds."""

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.runner.run)
            try:
                await app(scope, receive, send)
            except Exception as exc:
                failure = exc
                self.runner.app_failed(
                    f"the app raised {type(exc).__qualname__} while handling the connection"
                )
            finally:
                self.runner.release()
        if failure is not None:
            raise failure


def exchange_from_scope(scope: Scope) -> Exchange | Connection:
    """The request's exchange; RuntimeError naming the fix when there is none."""
    exchange = scope.get(EXCHANGE_KEY)
    if isinstance(exchange, Exchange | Connection):
        return exchange
    if scope.get("type") not in ("http", "websocket"):
        raise RuntimeError(
            "only HTTP requests and websocket connections have background tasks, and this is "
            f"a {scope.get('type')!r} scope"
        )
    raise RuntimeError(
        "this request has no background tasks batch: BackgroundTasksMiddleware is not "
        "installed. Add it with app.add_middleware(BackgroundTasksMiddleware) "
        "(Starlette, FastAPI), or wrap the ASGI app: app = BackgroundTasksMiddleware(app)"
    )


def from_scope(scope: Scope) -> BackgroundTasks:
    """The batch of the HTTP request (or websocket connection) ``scope`` belongs to.

    Use it in a raw ASGI app, or in a Starlette endpoint as
    ``from_scope(request.scope)`` (``websocket.scope`` in a websocket
    endpoint: there ``start_soon`` tasks run at once beside the handler, and
    ``add_task`` tasks once the connection has closed).

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
    return exchange_from_scope(scope).middleware.supervisor


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
        Middlewares never merge. :func:`serve` and the test clients wrap an
        app in a middleware of their own only when it has none: if the app
        has one inside (``app.add_middleware(...)``), that one owns the
        batches from lifespan startup on. Two middlewares a user put around
        the same app fail at startup with a message naming both. A
        middleware of a mounted sub-app (which sees no lifespan) applies its
        ``on_error``, ``error_hook``, ``backend``, ``spill`` and observers to
        the requests that reach it, and to nothing else; the app's
        middleware keeps the supervisor (deadline, limits, report), and the
        sub-app's backend is opened on its first request.
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
        if supervisor is not None:
            if (
                mode != "drain"
                or drain_timeout != DEFAULT_DRAIN_TIMEOUT
                or on_error != "continue"
                or error_hook is not None
                or thread_limit != DEFAULT_THREAD_LIMIT
                or keep_records != DEFAULT_KEEP_RECORDS
                or backend is not None
                or spill
                or tuple(observers)
            ):
                raise TypeError(
                    "pass either supervisor= or the supervisor's options, not both: "
                    "the options belong to the Supervisor(...) you pass"
                )
            self.supervisor = supervisor
        else:
            self.supervisor = Supervisor(
                mode=mode,
                drain_timeout=drain_timeout,
                on_error=on_error,
                error_hook=error_hook,
                thread_limit=thread_limit,
                keep_records=keep_records,
                backend=backend,
                spill=spill,
                observers=observers,
            )
        # Made by serve() or a test client around an app (around()): it gives
        # way to a middleware the app has inside.
        self.implicit = False
        # The middleware inside that this implicit one gave way to, at lifespan.
        self._inner: BackgroundTasksMiddleware | None = None
        self._trio_checked = False
        self._policies: dict[int, Policy] = {}
        self._backend_opened = False
        self._opening: trio.Lock | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            outer = scope.get(EXCHANGE_KEY)
            if isinstance(outer, Exchange) or self._inner is not None:
                if isinstance(outer, Exchange) and outer.middleware is not self:
                    await self._join(outer)
                await self.app(scope, receive, send)
                return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        elif kind == "websocket" and self._inner is None and EXCHANGE_KEY not in scope:
            if not self._trio_checked:
                check_trio()
                self._trio_checked = True
            connection = Connection(self, scope)
            scope[EXCHANGE_KEY] = connection
            await connection.serve(self.app, scope, receive, send)
            return
        else:
            await self.app(scope, receive, send)
            return
        # An HTTP request of ours, here rather than in a method of its own: a
        # pending batch keeps every frame between the server and its tasks.
        if not self._trio_checked:
            check_trio()
            self._trio_checked = True
        exchange = Exchange(send, receive, self, scope)
        board = exchange.board
        scope[EXCHANGE_KEY] = exchange
        board.requests += 1
        token = adopting.set(weakref.ref(exchange))
        try:
            await self.app(scope, exchange.receive, exchange)
        except BaseException as exc:
            exchange.close()
            board.request_ended()
            runner = exchange.runner
            if runner is not None:
                if not exchange.over and exchange.refused is None:
                    runner.app_failed(
                        f"the app raised {type(exc).__qualname__} while handling the request"
                    )
                # Cleanups run all the same (and, the response over, the batch).
                await runner.run()
            raise
        finally:
            adopting.reset(token)
        exchange.close()
        board.request_ended()
        if exchange.runner is not None:
            runner = exchange.to_run()
            if runner is not None:
                await runner.run()

    async def _join(self, outer: Exchange) -> None:
        """This (mounted) middleware's options apply to a request an outer one owns."""
        if self.implicit:
            return
        policy = self._policies.get(id(outer.middleware))
        if policy is None:
            policy = self.supervisor.policy.within(outer.middleware.supervisor.policy)
            self._policies[id(outer.middleware)] = policy
        outer.use(policy)
        if self.supervisor.backend is not None and not self._backend_opened:
            await self._open_backend_once(outer)

    async def _open_backend_once(self, outer: Exchange) -> None:
        backend = self.supervisor.backend
        assert backend is not None
        if self._opening is None:
            self._opening = trio.Lock()
        async with self._opening:
            if self._backend_opened:
                return
            timeout = getattr(backend, "hand_off_timeout", 5.0)
            try:
                with trio.fail_after(timeout):
                    await backend.open()
            except Exception as exc:
                raise RuntimeError(
                    f"the durable backend {backend!r} of a mounted app's "
                    f"BackgroundTasksMiddleware could not be opened within {timeout:g}s: {exc}"
                ) from exc
            self._backend_opened = True
            outer.board.backends.append(backend)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        outer = scope.get(MIDDLEWARE_KEY)
        if isinstance(outer, BackgroundTasksMiddleware):
            if outer.implicit:
                # The wrapper gives way: from now on this middleware's supervisor
                # is the one the server (or test client) shuts down and reports.
                outer.give_way_to(self)
                await self.app(scope, receive, send)
                return
            else:
                message = (
                    f"two BackgroundTasksMiddleware around the same app: {outer!r}, and "
                    f"inside it {self!r}; middlewares never merge: keep one (the app's "
                    "app.add_middleware(...) or the wrapper), with the options you want"
                )
                await receive()
                await send({"type": "lifespan.startup.failed", "message": message})
                raise RuntimeError(message)
        scope[MIDDLEWARE_KEY] = self
        await _Lifespan(self, scope, receive, send).run()

    def give_way_to(self, inner: BackgroundTasksMiddleware) -> None:
        """This wrapper (made by :meth:`around`) passes everything to ``inner``'s."""
        self._inner = inner
        self.supervisor = inner.supervisor
        self._trio_checked = True

    def __repr__(self) -> str:
        supervisor = self.supervisor
        options = [
            f"mode={supervisor.mode!r}",
            f"drain_timeout={supervisor.drain_timeout:g}",
            f"on_error={supervisor.on_error!r}",
        ]
        if supervisor.backend is not None:
            options.append(f"backend={supervisor.backend!r}")
        return f"BackgroundTasksMiddleware({', '.join(options)}) around {_name_of(self.app)}"

    @classmethod
    def around(cls, app: ASGIApp) -> BackgroundTasksMiddleware:
        """``app`` itself if it is a middleware already, else ``app`` wrapped in one.

        What :func:`serve` and the testing tools use: the wrapper gives way
        to a middleware the app has inside, at lifespan startup.
        """
        if isinstance(app, BackgroundTasksMiddleware):
            return app
        middleware = cls(app)
        middleware.implicit = True
        return middleware


def _name_of(app: object) -> str:
    return getattr(app, "__qualname__", None) or type(app).__qualname__


class _Lifespan:
    """Watches a lifespan: checks for trio, starts and closes the supervisor.

    The supervisor's own nursery, where app-level tasks run
    (:meth:`Supervisor.start_soon`), is opened around the app's lifespan call:
    it lives as long as the app. At lifespan shutdown the app-level tasks
    still running are cut (the server's requests are over by then) before
    the report is made.

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
        self.nursery: trio.Nursery | None = None
        # Under Hypercorn's own worker processes: a line when shutdown begins.
        self.watch: ServerShutdownWatch | None = None

    async def _receive(self) -> Message:
        message = await self.receive()
        self.read_any = True
        if message["type"] == "lifespan.startup":
            self.middleware.supervisor.start(self.nursery)
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
        if self.watch is not None:
            self.watch.catch_up(supervisor)
        if supervisor.board.runners:
            # App-level tasks (or batches the server left) still running: the
            # app is going away, so they are cut now, and counted, before the report.
            supervisor.begin_shutdown(mode="cancel", cause="lifespan shutdown")
            await supervisor.wait_idle()
        supervisor.close(cause="lifespan shutdown")
        backends = [supervisor.backend, *supervisor.board.backends]
        for backend in backends:
            if backend is None:
                continue
            try:
                await backend.aclose()
            except Exception:
                logger.exception("the durable backend %r failed to close", backend)

    async def run(self) -> None:
        try:
            check_trio()
        except RuntimeError as exc:
            message = await self.receive()
            if message["type"] == "lifespan.startup":
                await self.send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise
        self.middleware._trio_checked = True  # pyright: ignore[reportPrivateUsage]  # same module
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            supervisor = self.middleware.supervisor
            supervisor.start(nursery)
            self.watch = server_shutdown_watch()
            if self.watch is not None:
                nursery.start_soon(self.watch.run, supervisor)
            try:
                await self._serve()
            finally:
                if self.watch is not None:
                    self.watch.stop()

    async def _serve(self) -> None:
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
                self.middleware.supervisor.start(self.nursery)
                await self._open_backend()
                await self.send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close()
                await self.send({"type": "lifespan.shutdown.complete"})
                return
