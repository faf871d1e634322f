"""A live server: real Hypercorn (trio worker) on 127.0.0.1:0 in the test's nursery."""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config

from .._middleware import BackgroundTasksMiddleware
from .._serve import serve

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from .._asgi import ASGIApp
    from .._records import ShutdownReport
    from .._supervisor import Mode, Supervisor

__all__ = ["LiveServer", "open_live_server"]


@dataclass
class LiveServer:
    """A running server; make one with :func:`open_live_server`.

    Attributes:
        url: The base URL, e.g. ``http://127.0.0.1:41234``.
        middleware: The middleware the app runs in.
    """

    url: str
    middleware: BackgroundTasksMiddleware
    _trigger: trio.Event = field(repr=False)
    _stopped: trio.Event = field(repr=False)
    _report: list[ShutdownReport] = field(repr=False)

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor that runs the app's batches."""
        return self.middleware.supervisor

    async def shutdown(
        self, *, mode: Mode | None = None, drain_timeout: float | None = None
    ) -> ShutdownReport:
        """Shut the server down as SIGTERM would, and return the report.

        ``mode`` and ``drain_timeout`` override the server's for this
        shutdown. Calling it again returns the same report.
        """
        if not self._trigger.is_set():
            # serve() reads these when the trigger fires.
            if mode is not None or drain_timeout is not None:
                self.supervisor.begin_shutdown(mode=mode, drain_timeout=drain_timeout)
            self._trigger.set()
        await self._stopped.wait()
        return self._report[0]


@asynccontextmanager
async def open_live_server(
    app: ASGIApp,
    *,
    mode: Mode | None = None,
    drain_timeout: float | None = None,
    config: Config | None = None,
) -> AsyncGenerator[LiveServer, None]:
    """Serve ``app`` on ``127.0.0.1:0`` with real Hypercorn until the block ends.

    On exit the server shuts down (unless the test did, with
    :meth:`LiveServer.shutdown`); if the block raised, the server is cancelled.

    Args:
        app: Any ASGI app (wrapped in the middleware unless it is one).
        mode: The shutdown mode (None: the middleware's).
        drain_timeout: The drain timeout (None: the middleware's).
        config: Hypercorn's config. It is copied, not changed: the server
            binds ``127.0.0.1:0`` whatever its ``bind`` says, and the
            caller's object keeps its own.
    """
    middleware = BackgroundTasksMiddleware.around(app)
    config = Config() if config is None else copy.copy(config)
    config.bind = ["127.0.0.1:0"]
    trigger = trio.Event()
    stopped = trio.Event()
    report: list[ShutdownReport] = []

    async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            report.append(
                await serve(
                    middleware,
                    config,
                    mode=mode,
                    drain_timeout=drain_timeout,
                    shutdown_trigger=trigger.wait,
                    handle_signals=False,
                    task_status=task_status,
                )
            )
        finally:
            stopped.set()

    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        server = LiveServer(binds[0], middleware, trigger, stopped, report)
        try:
            yield server
            await server.shutdown()
        except BaseException as exc:
            # Re-raised outside the nursery: the test sees it unwrapped.
            error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
