"""A live server like :func:`trio_background.testing.open_live_server`, served by anycorn.

anycorn is a fork of Hypercorn on AnyIO; under trio it runs the app in trio
nurseries, so the middleware works there as under Hypercorn's trio worker.
``trio_background.serve`` drives Hypercorn only, so this wires the same order
of shutdown by hand, with the public API a user of anycorn would use: the
trigger begins the supervisor's shutdown (the batch deadline), sets anycorn's
``graceful_timeout`` to the time until that deadline plus the one second
``serve`` gives cut tasks for their cleanup, then lets anycorn stop
accepting. anycorn reads ``graceful_timeout`` only once its trigger returned,
as Hypercorn does. The report is made at lifespan shutdown, after the
connections ended.
"""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import anycorn
import trio

from trio_background import BackgroundTasksMiddleware

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    import anyio.abc

    from trio_background import ShutdownReport, Supervisor

__all__ = ["AnycornServer", "open_anycorn_server"]

Mode = Literal["drain", "cancel"]

# As ``serve`` (its CLEANUP_MARGIN): cut tasks run their cleanup in this time
# after the batch deadline, before the server cancels the connections.
CLEANUP_MARGIN = 1.0


@dataclass
class AnycornServer:
    """A running anycorn server; make one with :func:`open_anycorn_server`.

    Attributes:
        url: The base URL, e.g. ``http://127.0.0.1:41234``.
        middleware: The middleware the app runs in.
    """

    url: str
    middleware: BackgroundTasksMiddleware
    _trigger: trio.Event = field(repr=False)
    _stopped: trio.Event = field(repr=False)
    _mode: Mode | None = field(repr=False)
    _drain_timeout: float | None = field(repr=False)

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor that runs the app's batches (read at each use: the
        wrapper gives way to a middleware inside the app at startup)."""
        return self.middleware.supervisor

    async def shutdown(
        self, *, mode: Mode | None = None, drain_timeout: float | None = None
    ) -> ShutdownReport:
        """Begin the supervisor's shutdown, stop anycorn, return the report.

        ``mode`` and ``drain_timeout`` override the server's for this
        shutdown. Calling it again returns the same report.
        """
        if not self._trigger.is_set():
            self.supervisor.begin_shutdown(
                mode=self._mode if mode is None else mode,
                drain_timeout=self._drain_timeout if drain_timeout is None else drain_timeout,
                cause="trigger",
            )
            self._trigger.set()
        await self._stopped.wait()
        return self.supervisor.close()


@asynccontextmanager
async def open_anycorn_server(
    app: Any,
    *,
    mode: Mode | None = None,
    drain_timeout: float | None = None,
    config: anycorn.Config | None = None,
) -> AsyncGenerator[AnycornServer, None]:
    """Serve ``app`` on ``127.0.0.1:0`` with anycorn (under trio) until the block ends.

    As :func:`~trio_background.testing.open_live_server`: on exit the server
    shuts down (unless the test did), and if the block raised, the server is
    cancelled and the error re-raised unwrapped.
    """
    middleware = BackgroundTasksMiddleware.around(app)
    config = anycorn.Config() if config is None else copy.copy(config)
    config.bind = ["127.0.0.1:0"]
    trigger = trio.Event()
    stopped = trio.Event()

    async def stop_accepting() -> None:
        await trigger.wait()
        # anycorn reads this once the trigger has returned.
        config.graceful_timeout = middleware.supervisor.time_until_deadline() + CLEANUP_MARGIN

    # anycorn's types for an ASGI app (a union of TypedDict callables) and for
    # the task status (AnyIO's) are not the ones a plain app and trio use; the
    # objects are the same at run time.
    serve = cast("Callable[..., Awaitable[None]]", anycorn.serve)  # pyright: ignore[reportUnknownMemberType]

    async def run(*, task_status: anyio.abc.TaskStatus[list[str]]) -> None:
        try:
            await serve(
                middleware, config, shutdown_trigger=stop_accepting, task_status=task_status
            )
        finally:
            stopped.set()

    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        server = AnycornServer(binds[0], middleware, trigger, stopped, mode, drain_timeout)
        try:
            yield server
            await server.shutdown()
        except BaseException as exc:
            # Re-raised outside the nursery: the test sees it unwrapped.
            error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
