"""Hypercorn's own worker processes: a log line when the worker's shutdown begins.

Under plain ``hypercorn`` (or ``anycorn``) with worker processes (the
default: one), the parent process takes SIGINT and SIGTERM and sets a
``multiprocessing`` Event it handed to each worker. Each worker polls it
every 0.1 s, then stops accepting, gives its connections ``graceful_timeout``
seconds, and only then runs lifespan shutdown. The app is told nothing in
between, so without this the first line after the signal is the report.

There is no public way for an app to see that Event. But a worker spawned by
Hypercorn *is* the ``multiprocessing.Process`` Hypercorn built, and
``multiprocessing.current_process()`` returns it in the worker, with the
target and keyword arguments it was built with (``BaseProcess._target`` and
``_kwargs``, private but unchanged since Python 2.6):
``trio_worker(config=..., shutdown_event=..., sockets=...)``. So a watch is
made only when that target *is* Hypercorn's ``trio_worker`` (or anycorn's
``anyio_worker``), looked up in ``sys.modules`` (never imported here), and
every step is checked: anything else (``serve()`` and ``python -m
trio_background``, whose workers are ours and which log their own line at
the signal; ``hypercorn -w 0``; a test client; another layout in a later
version) means no watch and no line, never an error.

The watch polls the Event's ``is_set()`` every 0.1 s, as Hypercorn does. It
never waits on it: a waiter in ``Event.wait()`` that dies (a worker killed
by the OOM killer) leaves the Event's condition counting a sleeper that
will never wake, and the parent's next ``set()``, in its signal handler,
would then block forever.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
from typing import TYPE_CHECKING, Protocol, cast

import trio

from ._tasks import TaskState

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ["ServerShutdownWatch", "server_shutdown_watch"]

logger = logging.getLogger("trio_background")

# Hypercorn's own interval (check_multiprocess_shutdown_event).
POLL_INTERVAL = 0.1

# The worker functions that get the parent's shutdown Event: (module, function, server).
_WORKERS = (
    ("hypercorn.trio.run", "trio_worker", "Hypercorn"),
    ("anycorn.run", "anyio_worker", "anycorn"),
)


class _Flag(Protocol):
    def is_set(self) -> bool: ...


class ServerShutdownWatch:
    """Logs one line when the server's shutdown Event is set.

    Args:
        server: The server's name, for the line.
        flag: The Event the server's parent process sets.
        graceful_timeout: The server's graceful timeout, if known.

    Error handling:
        An Event that fails when read (the parent gone) ends the watch
        without a line; nothing is raised.
    """

    def __init__(self, server: str, flag: _Flag, graceful_timeout: float | None) -> None:
        self.server = server
        self.graceful_timeout = graceful_timeout
        self.noted = False
        self._flag: _Flag | None = flag
        self._scope = trio.CancelScope()

    def _is_set(self) -> bool:
        flag = self._flag
        if flag is None:
            return False
        try:
            return flag.is_set() is True
        except Exception:
            logger.debug("cannot read %s's shutdown event; no line at its shutdown", self.server)
            self._flag = None
            return False

    async def run(self, supervisor: Supervisor) -> None:
        """Poll the Event until it is set (then log the line), or until stopped.

        Cancellation:
            Returns quietly when stopped; a cancellation from outside propagates.
        """
        with self._scope:
            while not self._is_set():
                if self._flag is None:
                    return
                await trio.sleep(POLL_INTERVAL)
            self.note(supervisor)

    def stop(self) -> None:
        """End the watch without a line (the lifespan is over)."""
        self._scope.cancel()

    def catch_up(self, supervisor: Supervisor) -> None:
        """At lifespan shutdown: end the watch, with the line if the Event is set.

        Hypercorn may notice the Event first and, with no connection open,
        reach lifespan shutdown before the next poll: the line still comes
        before the report.
        """
        self._scope.cancel()
        if self._is_set():
            self.note(supervisor)

    def note(self, supervisor: Supervisor) -> None:
        """Log the line (once), with what the supervisor is running now."""
        if self.noted:
            return
        self.noted = True
        active = supervisor.snapshot().active
        if not active:
            logger.info(
                "%s is shutting this worker down: no background task unfinished; "
                "the report follows at lifespan shutdown",
                self.server,
            )
            return
        running = sum(record.state is TaskState.RUNNING for record in active)
        batches = len({record.batch for record in active})
        timeout = "" if self.graceful_timeout is None else f" ({self.graceful_timeout:g}s)"
        logger.info(
            "%s is shutting this worker down: %d background task%s unfinished (%d running) "
            "in %d batch%s; what still runs is cut when %s's graceful timeout%s ends; "
            "the report follows at lifespan shutdown",
            self.server,
            len(active),
            "" if len(active) == 1 else "s",
            running,
            batches,
            "" if batches == 1 else "es",
            self.server,
            timeout,
        )


def _server_of(target: object) -> str | None:
    if target is None:
        return None
    for module_name, function, server in _WORKERS:
        module = sys.modules.get(module_name)
        if module is not None and target is getattr(module, function, None):
            return server
    return None


def server_shutdown_watch() -> ServerShutdownWatch | None:
    """A watch if this process is a worker Hypercorn (or anycorn) spawned, else None."""
    process = multiprocessing.current_process()
    server = _server_of(getattr(process, "_target", None))
    arguments: object = getattr(process, "_kwargs", None)
    if server is None or not isinstance(arguments, dict):
        return None
    kwargs = cast("dict[str, object]", arguments)
    flag = kwargs.get("shutdown_event")
    if not callable(getattr(flag, "is_set", None)):
        return None
    timeout: object = getattr(kwargs.get("config"), "graceful_timeout", None)
    graceful_timeout = (
        float(timeout)
        if isinstance(timeout, int | float) and math.isfinite(timeout) and timeout >= 0
        else None
    )
    return ServerShutdownWatch(server, cast("_Flag", flag), graceful_timeout)
