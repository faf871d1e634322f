"""Serving: Hypercorn's trio worker, signals, and the order of shutdown.

``serve`` is ``hypercorn.trio.serve`` plus three things: it makes sure the
app is wrapped in the middleware, it turns SIGINT/SIGTERM (or the caller's
trigger) into one batch deadline before Hypercorn starts its graceful
shutdown, and it raises Hypercorn's ``graceful_timeout`` so that Hypercorn's
own deadline (which cancels every connection, and so every batch) never
comes before ours. Order of events:

1. the trigger fires: the supervisor sets the batch deadline;
2. Hypercorn stops accepting and lets in-flight requests finish;
3. batches end by the deadline (drained, or cut);
4. lifespan shutdown runs; the report is logged and returned.
"""

from __future__ import annotations

import copy
import gc
import signal
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve  # pyright: ignore[reportUnknownVariableType]

from ._middleware import BackgroundTasksMiddleware
from ._supervisor import Mode, check_mode, check_timeout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._asgi import ASGIApp
    from ._records import ShutdownReport

__all__ = ["serve"]

# Time after the batch deadline for cut tasks to run their cleanup before
# Hypercorn's own deadline cancels the connections.
CLEANUP_MARGIN = 1.0


async def serve(
    app: ASGIApp,
    config: Config | None = None,
    *,
    mode: Mode | None = None,
    drain_timeout: float | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> ShutdownReport:
    """Serve ``app`` with Hypercorn's trio worker until shutdown; report.

    Args:
        app: An ASGI app. It is wrapped in :class:`BackgroundTasksMiddleware`
            unless it already is one; a middleware inside the app (added with
            ``app.add_middleware``) defers to that outer one.
        config: Hypercorn's config (None: bind ``127.0.0.1:8000``). It is
            copied, not changed.
        mode: ``"drain"`` or ``"cancel"``; None uses the middleware's.
        drain_timeout: Seconds to drain; None uses the middleware's.
        shutdown_trigger: Shutdown starts when this returns.
        handle_signals: Start shutdown on SIGINT or SIGTERM (main thread
            only). A second signal during a drain cuts it short (cancel).
        task_status: With ``await nursery.start(serve, app)``, the bound URLs
            (as Hypercorn's ``serve`` gives them) once the server listens.

    Returns:
        The :class:`ShutdownReport`, also logged on ``trio_background``.

    Raises:
        ValueError: ``mode`` or ``drain_timeout`` is invalid.
    """
    if mode is not None:
        check_mode(mode)
    if drain_timeout is not None:
        check_timeout(drain_timeout)
    middleware = BackgroundTasksMiddleware.around(app)
    if config is None:
        config = Config()
        config.bind = ["127.0.0.1:8000"]
    else:
        config = copy.copy(config)
    server_config = config
    requested = trio.Event()
    signals_seen = 0

    frozen = False

    async def trigger() -> None:
        nonlocal frozen
        await requested.wait()
        # Cutting thousands of pending tasks allocates, and each full collection
        # walks the whole live heap (every pending request): on 10,000 tasks
        # they cost more than the shutdown itself. Freezing moves what lives now
        # out of the collector's sight; new garbage is still collected, and
        # serve() unfreezes on its way out.
        gc.freeze()
        frozen = True
        supervisor = middleware.supervisor
        supervisor.begin_shutdown(mode=mode, drain_timeout=drain_timeout)
        remaining = supervisor.time_until_deadline()
        server_config.graceful_timeout = max(
            server_config.graceful_timeout, remaining + CLEANUP_MARGIN
        )

    async def watch_signals() -> None:
        nonlocal signals_seen
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for _ in received:
                signals_seen += 1
                if signals_seen == 1:
                    requested.set()
                else:
                    middleware.supervisor.begin_shutdown(mode="cancel")

    async def watch_trigger(trigger_fn: Callable[[], Awaitable[Any]]) -> None:
        await trigger_fn()
        requested.set()

    try:
        async with trio.open_nursery() as nursery:
            if handle_signals and threading.current_thread() is threading.main_thread():
                nursery.start_soon(watch_signals)
            if shutdown_trigger is not None:
                nursery.start_soon(watch_trigger, shutdown_trigger)

            async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
                # Hypercorn's type for an ASGI app is a union of TypedDict callables
                # that no plain (scope, receive, send) app matches exactly.
                asgi_app: Any = middleware
                await hypercorn_serve(
                    asgi_app, server_config, shutdown_trigger=trigger, task_status=task_status
                )
                nursery.cancel_scope.cancel()

            binds: list[str] = await nursery.start(partial(run_server))
            task_status.started(binds)
        return middleware.supervisor.close()
    finally:
        if frozen:
            gc.unfreeze()
