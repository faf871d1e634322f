"""Serving: Hypercorn's trio worker, signals, and the order of shutdown.

``serve`` is Hypercorn's trio worker plus the order of shutdown. It makes
sure the app is wrapped in the middleware, turns SIGINT/SIGTERM (or the
caller's trigger) into one batch deadline before Hypercorn starts its
graceful shutdown, and sets Hypercorn's ``graceful_timeout`` to the time
left until that deadline plus one second, so Hypercorn cuts in-flight
requests one second after the batch deadline: never before, never later.

Order of events, however the server stops:

1. shutdown begins: the supervisor sets the batch deadline (health checks
   answer 503 from here on);
2. after ``shutdown_delay`` seconds, Hypercorn stops accepting and lets
   in-flight requests finish;
3. batches end by the deadline (drained, or cut);
4. lifespan shutdown runs; the report is logged and returned.

The server stops on a signal, on the trigger, on its own (Hypercorn's
``max_requests``: its shutdown cancels our trigger, which then begins the
same shutdown), or when ``serve()`` itself is cancelled: the server runs
shielded, so a cancellation starts the shutdown, waits for it to end by the
deadline, logs the report and then propagates.
"""

from __future__ import annotations

import copy
import gc
import signal
import threading
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app  # pyright: ignore[reportUnknownVariableType]

from ._middleware import BackgroundTasksMiddleware
from ._supervisor import Mode, Supervisor, check_mode, check_timeout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._asgi import ASGIApp, Message, Receive, Scope, Send
    from ._backend import DurableBackend
    from ._records import ShutdownReport

__all__ = ["ShutdownControl", "serve", "serve_middleware", "wrap"]

# Time after the batch deadline for cut tasks to run their cleanup before
# Hypercorn's own deadline cancels the connections (and the requests in them).
CLEANUP_MARGIN = 1.0


class ShutdownControl:
    """Starts one server's shutdown: the deadline first, then stop accepting.

    ``request()`` sets the batch deadline at once (so health checks fail
    from that moment) and lets Hypercorn stop accepting ``delay`` seconds
    later; ``escalate()`` (a second signal) cuts the drain and the delay
    short.
    """

    def __init__(
        self,
        middleware: BackgroundTasksMiddleware,
        mode: Mode | None,
        drain_timeout: float | None,
        delay: float,
        *,
        freeze_gc: bool = False,
    ) -> None:
        self.middleware = middleware
        self.mode: Mode | None = mode
        self.drain_timeout = drain_timeout
        self.delay = delay
        self.freeze_gc = freeze_gc
        self._frozen = False
        self.requested = trio.Event()
        self._hurry = trio.Event()
        self._signals = 0

    @property
    def supervisor(self) -> Supervisor:
        # Read at each use: the middleware may adopt an inner one's at startup.
        return self.middleware.supervisor

    def request(self, cause: str) -> None:
        """Begin shutdown now, for ``cause`` (only the first call counts)."""
        if self.requested.is_set():
            return
        if self.freeze_gc and not self._frozen:
            # Process-wide, so only when asked (freeze_gc=True, --freeze-gc):
            # what lives now leaves the collector's sight, and cutting many
            # pending tasks no longer costs full collections over all of them.
            gc.freeze()
            self._frozen = True
        self.supervisor.begin_shutdown(
            mode=self.mode, drain_timeout=self.drain_timeout, cause=cause
        )
        self.requested.set()

    def escalate(self, cause: str = "signal") -> None:
        """Cut the batches now and stop accepting at once."""
        self.request(cause)
        self.supervisor.begin_shutdown(mode="cancel")
        self._hurry.set()

    def signal(self) -> None:
        """A SIGINT/SIGTERM: the first begins shutdown, later ones escalate."""
        self._signals += 1
        if self._signals == 1:
            self.request("signal")
        else:
            self.escalate()

    def thaw(self) -> None:
        """Undo the freeze of :meth:`request`, if it froze (the server has stopped)."""
        if self._frozen:
            self._frozen = False
            gc.unfreeze()

    async def stop_accepting(self) -> None:
        """Return when Hypercorn should stop accepting (after the delay)."""
        await self.requested.wait()
        if self.delay > 0:
            with trio.move_on_after(self.delay):
                await self._hurry.wait()


def wrap(
    app: ASGIApp, backend: DurableBackend | None = None, *, spill: bool = False
) -> BackgroundTasksMiddleware:
    """``app`` as the outermost middleware, with ``backend`` if one is given."""
    if backend is None and not spill:
        return BackgroundTasksMiddleware.around(app)
    if isinstance(app, BackgroundTasksMiddleware):
        raise TypeError(
            "backend= needs an app that is not wrapped yet: pass the backend to the "
            "middleware instead, BackgroundTasksMiddleware(app, backend=backend)"
        )
    return BackgroundTasksMiddleware(app, backend=backend, spill=spill)


async def serve(
    app: ASGIApp,
    config: Config | None = None,
    *,
    mode: Mode | None = None,
    drain_timeout: float | None = None,
    shutdown_delay: float = 0.0,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    handle_signals: bool = True,
    backend: DurableBackend | None = None,
    spill: bool = False,
    freeze_gc: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> ShutdownReport:
    """Serve ``app`` with Hypercorn's trio worker until shutdown; report.

    Args:
        app: An ASGI app. It is wrapped in :class:`BackgroundTasksMiddleware`
            unless it already is one; a middleware inside the app (added with
            ``app.add_middleware``) defers to that outer one.
        config: Hypercorn's config (None: bind ``127.0.0.1:8000``). It is
            copied, not changed. Its ``graceful_timeout`` is replaced at
            shutdown by the time until the batch deadline plus one second.
        mode: ``"drain"`` or ``"cancel"``; None uses the middleware's.
        drain_timeout: Seconds to drain; None uses the middleware's.
        shutdown_delay: Seconds to keep accepting connections after shutdown
            began (health checks answer 503 meanwhile, so load balancers stop
            routing here first). The batch deadline still counts from the
            moment shutdown began. A second signal ends the delay.
        shutdown_trigger: Shutdown starts when this returns.
        handle_signals: Start shutdown on SIGINT or SIGTERM (main thread
            only). A second signal during a drain cuts it short (cancel).
        backend: A durable backend for the middleware that ``serve`` adds
            (see :class:`BackgroundTasksMiddleware`); the app must not be
            wrapped already.
        spill: At the drain deadline, hand durable tasks not yet started
            off to ``backend`` instead of skipping them.
        freeze_gc: When shutdown begins, call ``gc.freeze()`` (and
            ``gc.unfreeze()`` once the server has stopped). Process-wide,
            hence off by default: with thousands of pending tasks, each full
            collection walks all of them (about 0.5 s at 10,000 pending
            FastAPI requests), and cutting them triggers such collections;
            frozen, the cut pays only for what it allocates. See
            :ref:`deploying-many-pending`.
        task_status: With ``await nursery.start(serve, app)``, the bound URLs
            (as Hypercorn's ``serve`` gives them) once the server listens.

    Returns:
        The :class:`ShutdownReport`, also logged on ``trio_background``.

    Raises:
        ValueError: ``mode``, ``drain_timeout`` or ``shutdown_delay`` is
            invalid.
        TypeError: ``backend`` or ``spill`` with an app that is a middleware
            already.

    Cancellation:
        Cancelling ``serve`` begins the same shutdown: the server finishes it
        by the deadline (shielded), the report is logged, and the
        cancellation then propagates.
    """
    if mode is not None:
        check_mode(mode)
    if drain_timeout is not None:
        check_timeout(drain_timeout)
    check_timeout(shutdown_delay, "shutdown_delay")
    middleware = wrap(app, backend, spill=spill)
    if config is None:
        config = Config()
    control = ShutdownControl(middleware, mode, drain_timeout, shutdown_delay, freeze_gc=freeze_gc)

    async def watch(control: ShutdownControl) -> None:
        async with trio.open_nursery() as nursery:
            if handle_signals and threading.current_thread() is threading.main_thread():
                nursery.start_soon(watch_signals, control)
            if shutdown_trigger is not None:
                await shutdown_trigger()
                control.request("trigger")

    return await serve_middleware(middleware, config, control, watch, task_status=task_status)


async def watch_signals(
    control: ShutdownControl, signalled_before: Callable[[], bool] | None = None
) -> None:
    """Feed SIGINT/SIGTERM to ``control`` for as long as this runs.

    ``signalled_before()``: whether a signal came before this watched (the
    command line's own handler saw it); it then counts as the first.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        if signalled_before is not None and signalled_before():
            control.signal()
        async for _ in received:
            control.signal()


def _watch_startup(app: ASGIApp, started: trio.Event) -> ASGIApp:
    async def watching(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def watching_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()
            await send(message)

        await app(scope, receive, watching_send)

    return watching


async def serve_middleware(
    middleware: BackgroundTasksMiddleware,
    config: Config,
    control: ShutdownControl,
    watch: Callable[[ShutdownControl], Awaitable[None]],
    *,
    sockets: Sockets | None = None,
    started: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> ShutdownReport:
    """Serve ``middleware`` until ``control`` ends it; the core of :func:`serve`.

    ``watch(control)`` runs beside the server (signals, a trigger, a
    parent process) and is cancelled when the server has stopped.
    ``sockets``: already bound sockets (shared by worker processes).
    ``started`` is set when the app's lifespan startup completed (Hypercorn
    starts listening even when it failed, and fails a moment later).
    """
    server_config = copy.copy(config)
    stopped = trio.Event()

    async def hypercorn_trigger() -> None:
        try:
            await control.stop_accepting()
        finally:
            # Also reached when Hypercorn stops by itself (max_requests): it
            # cancels this trigger, then reads graceful_timeout.
            control.request(
                "max_requests" if server_config.max_requests is not None else "server stop"
            )
            remaining = control.supervisor.time_until_deadline()
            server_config.graceful_timeout = remaining + CLEANUP_MARGIN

    async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
        # Hypercorn's type for an ASGI app is a union of TypedDict callables
        # that no plain (scope, receive, send) app matches exactly.
        asgi_app: Any = middleware if started is None else _watch_startup(middleware, started)
        try:
            with trio.CancelScope(shield=True):
                await worker_serve(
                    wrap_app(asgi_app, server_config.wsgi_max_body_size, "asgi"),
                    server_config,
                    sockets=sockets,
                    shutdown_trigger=hypercorn_trigger,
                    task_status=task_status,
                )
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, control)
        try:
            binds: list[str] = await nursery.start(run_server)
            task_status.started(binds)
            await stopped.wait()
        except trio.Cancelled:
            if not stopped.is_set():
                # serve() itself was cancelled: the same shutdown, then report.
                control.request("cancellation")
                with trio.CancelScope(shield=True):
                    await stopped.wait()
                control.supervisor.close()
            raise
        finally:
            nursery.cancel_scope.cancel()
            control.thaw()
    return control.supervisor.close()
