"""Thread hand-off: a sync task's function in a worker thread, and nothing more.

A sync task runs through ``trio.to_thread.run_sync`` under the supervisor's
limiter, with ``abandon_on_cancel=True`` so that shutdown never waits on a
thread past the deadline. The one subtlety is the gate: when trio gives up on
a call before the function started (cancelled while waiting for a token or
for the thread to pick it up), the function must not start later behind
trio's back, so "started" and "abandoned" are made exclusive under a lock and
the task's final state is true.

One hand-off less per task: ``CapacityLimiter.acquire_on_behalf_of`` ends
with a schedule point even when a token is free, a full pass of the run loop
before the thread even starts; the limiter is handed to trio through
:class:`_Eager`, which takes a free token at once (after the same
cancellation check) and waits like the limiter only when none is free. The
limit, its statistics and the wait for a token are the limiter's own.

Test clocks: a hook (installed by ``trio_background.testing``, never imported
here) may wrap the wait for a thread, so that under ``trio.testing.MockClock``
virtual time follows real time while a thread works, as it does in production.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, cast

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ThreadOutcome", "run_in_thread", "set_thread_wait_hook"]

_wait_hook: Callable[[], AbstractContextManager[object]] | None = None


def set_thread_wait_hook(hook: Callable[[], AbstractContextManager[object]] | None) -> None:
    """Install ``hook``: its context manager is entered while a task's thread runs."""
    global _wait_hook
    _wait_hook = hook


class _Eager:
    """A CapacityLimiter-like view of ``limiter`` that does not yield when a token is free."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._limiter.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(borrower)

    def release_on_behalf_of(self, borrower: object) -> None:
        self._limiter.release_on_behalf_of(borrower)


class ThreadOutcome:
    """What became of a call in a thread, set by :func:`run_in_thread`.

    Attributes:
        started_at: The clock's time when the function started in its thread,
            or None if it never started.
    """

    __slots__ = ("lock", "started_at", "withdrawn")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.withdrawn = False
        self.started_at: float | None = None


async def run_in_thread(
    func: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    name: str,
    limiter: trio.CapacityLimiter | None,
    outcome: ThreadOutcome,
) -> object:
    """Call ``func(*args, **kwargs)`` in a worker thread, wait for it, return its result.

    Raises:
        Exception: Whatever the function raised; TypeError if it returned an
            awaitable (a sync function wrapping an async one).

    Cancellation:
        ``trio.Cancelled`` is raised at once: the thread, if its function
        started (``outcome.started_at`` is set), is left to finish on its own.
    """
    clock = trio.lowlevel.current_clock()

    def call() -> object:
        with outcome.lock:
            if outcome.withdrawn:
                return None
            outcome.started_at = clock.current_time()
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"background task {name} is a sync function that returned an awaitable "
                f"({type(result).__qualname__}), which would never run; pass the async "
                "function itself to add_task() (add_task(func, arg) rather than "
                "add_task(lambda: func(arg)))"
            )
        return result

    hook = _wait_hook
    with nullcontext() if hook is None else hook():
        try:
            return await trio.to_thread.run_sync(
                call,
                abandon_on_cancel=True,
                # trio documents "a CapacityLimiter-like object" here.
                limiter=None if limiter is None else cast("trio.CapacityLimiter", _Eager(limiter)),
            )
        except trio.Cancelled:
            with outcome.lock:
                outcome.withdrawn = True
            raise
