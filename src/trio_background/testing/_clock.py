"""Threads under ``trio.testing.MockClock``: virtual time follows real time.

With autojump, a MockClock jumps whenever every trio task is blocked, and a
task waiting for its worker thread counts as blocked: a sync background task
doing one real second of work would see a 30 s drain deadline fire at once.
Holding the clock still instead would let it finish in no virtual time and
end ``completed`` where production ends it ``abandoned``. So while any task's
thread runs, autojump is off and a pacer moves the clock forward by real
time, one step (:data:`STEP`) per step of real time the threads are still
busy. A thread shorter than a step costs no virtual time (reports stay the
same byte for byte); a longer one meets the deadline as in production. When
the last thread returns, the clock's own autojump comes back.

Installed by importing this module (``trio_background.testing`` does); the
core never imports it, it only offers the hook.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio
import trio.testing

from .._threads import set_thread_wait_hook

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["STEP", "install"]

STEP = 0.1
"""Real (and virtual) seconds per step of the pacer."""


class _Held:
    """Threads running under one MockClock, and the setting to restore."""

    __slots__ = ("autojump_threshold", "idle", "threads")

    def __init__(self) -> None:
        self.threads = 0
        self.autojump_threshold = 0.0
        self.idle = threading.Event()


_HELD: trio.lowlevel.RunVar[_Held] = trio.lowlevel.RunVar("trio_background_clock_held")


async def _pace(clock: trio.testing.MockClock, idle: threading.Event) -> None:
    while not await trio.to_thread.run_sync(idle.wait, STEP, abandon_on_cancel=True):
        clock.jump(STEP)


@contextmanager
def _real_time_while_threads_run() -> Generator[None, None, None]:
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    try:
        held = _HELD.get()
    except LookupError:
        held = _Held()
        _HELD.set(held)
    if held.threads == 0:
        held.autojump_threshold = clock.autojump_threshold
        clock.autojump_threshold = float("inf")
        held.idle = threading.Event()
        trio.lowlevel.spawn_system_task(_pace, clock, held.idle)
    held.threads += 1
    try:
        yield
    finally:
        held.threads -= 1
        if held.threads == 0:
            held.idle.set()
            clock.autojump_threshold = held.autojump_threshold


def install() -> None:
    """Make sync tasks' threads under a MockClock take real time (idempotent)."""
    set_thread_wait_hook(_real_time_while_threads_run)


install()
