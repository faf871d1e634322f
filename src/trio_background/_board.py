"""The board: what the batches of one supervisor share in one trio run.

The supervisor makes the board and reads it; each batch's runner registers
on it, writes its records to its ledger, and takes its deadline. Shutdown is
one deadline set here, on the cancel scopes of every running batch (and of
every final send in flight), and on those that start later: the board holds
scopes and data, and calls no runner.

:class:`CutWatch` is how a record tells a task the deadline cut as soon as
the loop reached it from one that held the cut off (its ``overrun``).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import trio

from ._ledger import Ledger

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import DurableBackend
    from ._runner import Runner

__all__ = ["CUT_MARGIN", "WORKER", "Board", "CutWatch"]

# Set in a worker process of a server with several (``--workers``): the prefix
# of its task ids, ``"<pid>-"``, so that ids are unique across the workers.
WORKER: trio.lowlevel.RunVar[str] = trio.lowlevel.RunVar("trio_background.worker")

# After the batch deadline the server cuts the requests still in flight this
# much later (serve() sets Hypercorn's graceful timeout so): a request's final
# send, shielded from the app's own cancellation, may go on until then.
CUT_MARGIN = 1.0


class CutWatch(trio.abc.Instrument):
    """Tells a task the deadline cut as soon as the loop reached it from one that held it off.

    Installed on the trio run from the start of a shutdown. Two facts, no
    clock threshold: whether the event loop has gone idle (nothing left to
    run) since the deadline passed, and when the current task step began.
    Every task that the cut ends promptly ends before the loop can go idle,
    however long the loop takes to reach them all; a task that shielded
    itself, swallowed the cancellation and waited, or waited in its cleanup
    is still running when the loop idles. A task whose ending step began
    before the deadline blocked the loop across it.
    """

    def __init__(self, deadline: float, now: Callable[[], float]) -> None:
        self.deadline = deadline
        self.now = now
        self.idled = False
        self.step_started = -math.inf

    def before_io_wait(self, timeout: float) -> None:
        if (
            not self.idled
            and trio.lowlevel.current_statistics().tasks_runnable == 0
            and self.now() >= self.deadline
        ):
            self.idled = True

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.step_started = self.now()

    def held_off(self) -> bool:
        """Whether the task ending now held the cut off (see the class docstring)."""
        return self.idled or self.step_started < self.deadline


class Board:
    """What the runners of one supervisor share in one trio run.

    The supervisor makes it and reads it; runners register on it, write
    their records to its ledger and take its deadline. ``requests`` counts
    the requests being handled, so that a report waits for a request that
    may still open a batch.
    """

    def __init__(self, *, keep_records: int, thread_limit: int) -> None:
        # trio.current_time() without its wrappers: called several times per task.
        self.now = trio.lowlevel.current_clock().current_time
        self.ledger = Ledger(self.now(), keep_records, WORKER.get(""))
        self.limiter = trio.CapacityLimiter(thread_limit)
        self.token = trio.lowlevel.current_trio_token()
        self.thread = threading.get_ident()
        self.deadline = math.inf
        self.watch: CutWatch | None = None
        self.next_batch = 1
        self.runners: dict[int, Runner] = {}
        # The cancel scopes of the running batches' nurseries: the deadline is set on them.
        self.scopes: set[trio.CancelScope] = set()
        self.requests = 0
        self.shields: set[trio.CancelScope] = set()
        # Durable backends opened on first use (a mounted app's): closed with the app.
        self.backends: list[DurableBackend] = []
        self.closed = False
        # Made only when someone waits for idleness: most requests never do.
        self.idle: trio.Event | None = None

    def unregister(self, number: int) -> None:
        if self.runners.pop(number, None) is not None:
            self.check_idle()

    def request_ended(self) -> None:
        self.requests -= 1
        self.check_idle()

    def check_idle(self) -> None:
        if not self.runners and not self.requests and self.idle is not None:
            self.idle.set()
            self.idle = None

    def cut(self, deadline: float) -> None:
        """Bring every batch (and final send) to ``deadline``, watched by a new CutWatch."""
        self.deadline = deadline
        self.unwatch()
        if not self.closed:
            self.watch = CutWatch(deadline, self.now)
            trio.lowlevel.add_instrument(self.watch)
        if deadline <= self.now():
            # Cut now rather than through trio's deadline heap (a push and a
            # pop per batch when thousands wait).
            for scope in self.scopes:
                scope.cancel()
        else:
            for scope in self.scopes:
                scope.deadline = deadline
        for shield in self.shields:
            shield.deadline = deadline + CUT_MARGIN

    def unwatch(self) -> None:
        if self.watch is not None:
            try:
                trio.lowlevel.remove_instrument(self.watch)
            except KeyError:  # trio removes an instrument that raised
                pass
            self.watch = None
