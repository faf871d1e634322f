"""Serving: Hypercorn's trio worker, signals, and the order of shutdown.

``serve`` is Hypercorn's trio worker plus the order of shutdown. It makes
sure the app is wrapped in the middleware, turns SIGINT/SIGTERM (or the
caller's trigger) into one batch deadline before Hypercorn starts its
graceful shutdown, and sets Hypercorn's ``graceful_timeout`` to the time
left until that deadline plus one second, so Hypercorn cuts in-flight
requests one second after the batch deadline: never before, never later.

Order of events, however the server stops:

1. shutdown is asked for (a signal, the trigger): health checks answer 503
   from here on;
2. after ``shutdown_delay`` seconds (counted from the signal's arrival),
   shutdown proper begins: the supervisor sets the batch deadline, and
   Hypercorn stops accepting and lets in-flight requests finish;
3. batches end by the deadline (drained, or cut);
4. lifespan shutdown runs; the report is logged and returned.

The server stops on a signal, on the trigger, on its own (Hypercorn's
``max_requests``: its shutdown cancels our trigger, which then begins the
same shutdown), or when ``serve()`` itself is cancelled: the server runs
shielded, so a cancellation starts the shutdown, waits for it to end by the
deadline, logs the report and then propagates.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app  # pyright: ignore[reportUnknownVariableType]

from ._middleware import BackgroundTasksMiddleware
from ._supervisor import Mode, Supervisor, check_mode, check_timeout

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Generator
    from types import FrameType

    from ._asgi import ASGIApp, Message, Receive, Scope, Send
    from ._backend import DurableBackend
    from ._records import ShutdownReport

__all__ = [
    "ShutdownControl",
    "serve",
    "serve_middleware",
    "signal_arrivals",
    "trio_time_of",
    "unhook_signal_wakeup",
    "watch_signals",
    "wrap",
]

# Time after the batch deadline for cut tasks to run their cleanup before
# Hypercorn's own deadline cancels the connections (and the requests in them).
CLEANUP_MARGIN = 1.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


def trio_time_of(arrival: float) -> float:
    """The time on trio's clock of ``arrival``, a :func:`time.monotonic` reading.

    The monotonic clock is the system's, so a reading taken in a signal
    handler, or in another process, converts: trio's now minus the time
    elapsed since (never in the future).
    """
    return trio.current_time() - max(0.0, time.monotonic() - arrival)


class ShutdownControl:
    """Starts one server's shutdown: ready no more, then the deadline, then stop accepting.

    ``request()`` marks the server as stopping at once (health checks answer
    503 from that moment); shutdown proper (the batch deadline, then
    Hypercorn's graceful stop) begins ``delay`` seconds later, counted from
    when the request arrived. ``escalate()`` (a second signal) ends the delay,
    cuts the batches now and in-flight request handlers one
    ``CLEANUP_MARGIN`` later.

    Times (``at=``) are on trio's clock: when the signal arrived, which may
    be earlier than now if the event loop was blocked.
    """

    def __init__(
        self,
        middleware: BackgroundTasksMiddleware,
        mode: Mode | None,
        drain_timeout: float | None,
        delay: float,
        *,
        freeze_gc: bool = False,
        cleanup_margin: float = CLEANUP_MARGIN,
    ) -> None:
        self.middleware = middleware
        self.mode: Mode | None = mode
        self.drain_timeout = drain_timeout
        self.delay = delay
        self.freeze_gc = freeze_gc
        self.cleanup_margin = cleanup_margin
        self._frozen = False
        self.requested = trio.Event()
        self._requested_at = math.inf
        self._cause = "signal"
        self._begun = False
        self._hurry = trio.Event()
        self._signals = 0
        # In-flight request handlers (see handle()), cut at cut_at.
        self._handlers: set[trio.CancelScope] = set()
        self._handlers_done: trio.Event | None = None
        self.cut_at = math.inf

    @property
    def supervisor(self) -> Supervisor:
        # Read at each use: the middleware may adopt an inner one's at startup.
        return self.middleware.supervisor

    def request(self, cause: str, *, at: float | None = None) -> None:
        """Shutdown is asked for, at ``at`` (None: now); only the first call counts.

        Health checks fail from now on; the batch deadline is set now, or at
        the end of the shutdown delay.
        """
        if self.requested.is_set():
            return
        now = trio.current_time()
        self._requested_at = now if at is None else min(at, now)
        self._cause = cause
        self.supervisor.announce_stop()
        self.requested.set()
        if self.delay <= 0:
            self.begin()

    def begin(self, *, at: float | None = None) -> None:
        """Begin shutdown proper (the batch deadline) if it has not begun.

        ``at``: when it begins (the end of the delay; None: when the
        request came if there is no delay, else now).
        """
        self.request("server stop")
        if self._begun:
            return
        self._begun = True
        if at is None:
            at = self._requested_at if self.delay <= 0 else trio.current_time()
        if self.freeze_gc and not self._frozen:
            # Process-wide, so only when asked (freeze_gc=True, --freeze-gc):
            # what lives now leaves the collector's sight, and cutting many
            # pending tasks no longer costs full collections over all of them.
            gc.freeze()
            self._frozen = True
        self._begin_shutdown(mode=self.mode, drain_timeout=self.drain_timeout, at=at)
        self._cut_handlers_after_deadline()

    def _begin_shutdown(self, *, mode: Mode | None, drain_timeout: float | None, at: float) -> None:
        self.supervisor.begin_shutdown(
            mode=mode, drain_timeout=drain_timeout, cause=self._cause, started_at=at
        )

    def escalate(self, cause: str = "signal", *, at: float | None = None) -> None:
        """Cut the batches now (from ``at``), end the delay, cut handlers soon after."""
        self.request(cause, at=at)
        self.begin()
        now = trio.current_time()
        self._begin_shutdown(
            mode="cancel", drain_timeout=None, at=now if at is None else min(at, now)
        )
        self._hurry.set()
        self._cut_handlers_after_deadline()

    def signal(self, *, at: float | None = None) -> None:
        """A SIGINT/SIGTERM (arrived at ``at``): the first begins shutdown, later ones escalate."""
        self._signals += 1
        if self._signals == 1:
            self.request("signal", at=at)
        else:
            self.escalate(at=at)

    def thaw(self) -> None:
        """Undo the freeze of :meth:`begin`, if it froze (the server has stopped)."""
        if self._frozen:
            self._frozen = False
            gc.unfreeze()

    async def stop_accepting(self) -> None:
        """Return when Hypercorn should stop accepting: shutdown proper has begun."""
        await self.requested.wait()
        if self.delay > 0:
            end = self._requested_at + self.delay
            with trio.move_on_at(end):
                await self._hurry.wait()
            self.begin(at=min(end, trio.current_time()))

    def _cut_handlers_after_deadline(self) -> None:
        cut_at = trio.current_time() + self.supervisor.time_until_deadline() + self.cleanup_margin
        if cut_at < self.cut_at:
            self.cut_at = cut_at
            for scope in self._handlers:
                scope.deadline = cut_at

    def handle(self, app: ASGIApp) -> ASGIApp:
        """``app`` with each request's (or websocket's) call cut at :attr:`cut_at`.

        Hypercorn cuts connections once, at the graceful timeout it read
        when it stopped accepting; a second signal brings the cut closer,
        which only this can do.
        """

        async def handled(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await app(scope, receive, send)
                return
            with trio.CancelScope(deadline=self.cut_at) as cut:
                self._handlers.add(cut)
                try:
                    await app(scope, receive, send)
                finally:
                    self._handlers.discard(cut)
                    if not self._handlers and self._handlers_done is not None:
                        self._handlers_done.set()

        return handled

    async def wait_handlers_done(self) -> None:
        """Return once no request handler (nor the batch it runs) is in flight."""
        while self._handlers:
            self._handlers_done = trio.Event()
            await self._handlers_done.wait()


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
        shutdown_delay: Seconds to keep accepting connections after the
            first signal (or the trigger): health checks answer 503 meanwhile,
            so load balancers stop routing here first, and batches run as
            usual (in both modes: a request answered meanwhile keeps its
            work). Shutdown proper, and the batch deadline, begin when the
            delay ends. A second signal ends the delay and cuts at once.
        shutdown_trigger: Shutdown starts when this returns.
        handle_signals: Start shutdown on SIGINT or SIGTERM (main thread
            only); the deadline counts from the signal's arrival, even when
            a task blocked the event loop then. A second signal cuts the
            batches at once (cancel) and in-flight request handlers one
            second later.
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


class _Arrivals:
    """Each SIGINT/SIGTERM's arrival time, as an async iterator (see signal_arrivals)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        self._lot.unpark_all()

    def __aiter__(self) -> _Arrivals:
        return self

    async def __anext__(self) -> float:
        while not self.times:
            await self._lot.park()
        return self.times.pop(0)


@contextlib.contextmanager
def signal_arrivals() -> Generator[AsyncIterator[float]]:
    """SIGINT and SIGTERM as the :func:`time.monotonic` time each arrived.

    Like :func:`trio.open_signal_receiver`, but the handler notes when the
    signal arrived: Python runs it as soon as the main thread runs Python
    code again (even inside a task that blocks the event loop with
    ``time.sleep``), while trio learns of it only when its loop runs. Main
    thread only.
    """
    token = trio.lowlevel.current_trio_token()
    arrivals = _Arrivals()

    def handler(signum: int, frame: FrameType | None) -> None:
        arrivals.times.append(time.monotonic())
        token.run_sync_soon(arrivals.wake, idempotent=True)

    previous = {number: signal.signal(number, handler) for number in _SIGNALS}
    try:
        yield arrivals
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


async def watch_signals(
    control: ShutdownControl, signalled_before: Callable[[], float | None] | None = None
) -> None:
    """Feed SIGINT/SIGTERM to ``control`` for as long as this runs.

    ``signalled_before()``: when a signal came before this watched (the
    command line's own handler saw it, a :func:`time.monotonic` time), or
    None; it then counts as the first.
    """
    with signal_arrivals() as arrivals:
        if signalled_before is not None and (first := signalled_before()) is not None:
            control.signal(at=trio_time_of(first))
        async for arrived in arrivals:
            control.signal(at=trio_time_of(arrived))


async def unhook_signal_wakeup(main: Callable[[], Awaitable[T]]) -> T:
    """``await main()``, then stop signals writing to trio's wakeup socket.

    For a program's whole ``trio.run`` (the command line's): when the run
    ends, trio closes its wakeup socket before it unhooks it from Python's C
    signal handler, so a signal arriving in between printed "Exception
    ignored when trying to write to the signal wakeup fd ... Bad file
    descriptor" (or Broken pipe) with a traceback. Unhooked here, in the
    main thread, before trio closes anything, signals only reach the Python
    handler that comes next (the command line's guard).
    """
    try:
        return await main()
    finally:
        signal.set_wakeup_fd(-1)


def _connections_nursery() -> list[trio.Nursery]:
    """The nursery of Hypercorn's connections, seen from its shutdown trigger.

    Hypercorn's ``worker_serve`` opens three nurseries, in this order: the
    lifespan's, the connections' (``server_nursery``) and the one that runs
    the trigger. Found through trio's public task tree; if Hypercorn's shape
    is not that, nothing (its graceful timeout alone then ends connections).
    """
    ours = trio.lowlevel.current_task().parent_nursery
    owner = None if ours is None else ours.parent_task
    if ours is None or owner is None:
        return []
    nurseries = owner.child_nurseries
    if len(nurseries) != 3 or nurseries[2] is not ours:
        return []
    return [nurseries[1]]


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
    connections: list[trio.Nursery] = []
    accepting_stopped = trio.Event()

    async def hypercorn_trigger() -> None:
        connections.extend(_connections_nursery())
        try:
            await control.stop_accepting()
        finally:
            # Also reached when Hypercorn stops by itself (max_requests): it
            # cancels this trigger, then reads graceful_timeout.
            control.request(
                "max_requests" if server_config.max_requests is not None else "server stop"
            )
            control.begin()
            remaining = control.supervisor.time_until_deadline()
            server_config.graceful_timeout = remaining + control.cleanup_margin
            accepting_stopped.set()

    async def close_connections_when_done() -> None:
        # Hypercorn waits for every connection until its graceful timeout, and
        # a keep-alive client that sent its next request while the batch ran
        # (the response was over) leaves one parked for good after Hypercorn
        # closed it. Once no request handler (nor its batch) is left, the
        # connections hold nothing worth waiting for: close them now, so the
        # server stops at the deadline, not one second after it.
        await accepting_stopped.wait()
        await control.wait_handlers_done()
        for nursery in connections:
            nursery.cancel_scope.cancel()

    async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
        # Hypercorn's type for an ASGI app is a union of TypedDict callables
        # that no plain (scope, receive, send) app matches exactly.
        handled = control.handle(middleware)
        asgi_app: Any = handled if started is None else _watch_startup(handled, started)
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
        nursery.start_soon(close_connections_when_done)
        try:
            binds: list[str] = await nursery.start(run_server)
            task_status.started(binds)
            await stopped.wait()
        except trio.Cancelled:
            if not stopped.is_set():
                # serve() itself was cancelled: the same shutdown, then report.
                control.request("cancellation")
                control.begin()
                with trio.CancelScope(shield=True):
                    await stopped.wait()
                control.supervisor.close()
            raise
        finally:
            nursery.cancel_scope.cancel()
            control.thaw()
    return control.supervisor.close()
