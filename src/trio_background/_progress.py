"""Progress reported from inside a running task, with nothing passed in.

The runner puts the running task in a context variable. Async tasks run in
the request's task, where the variable is set around the call; sync tasks run
in a thread that ``trio.to_thread.run_sync`` starts with a copy of the same
context. Either way :func:`report_progress` finds its task with one
``ContextVar.get()`` and stores one tuple: cheap enough to call in a loop.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import NamedTuple, Protocol

__all__ = ["Progress", "current_task", "report_progress"]


class Progress(NamedTuple):
    """How far a task is, as it last reported.

    Attributes:
        done: Units done so far.
        total: Units in all, or None if unknown.
        message: What the task says it is doing, or None.
    """

    done: float
    total: float | None = None
    message: str | None = None

    @property
    def fraction(self) -> float | None:
        """``done / total`` clamped to [0, 1], or None when the total is unknown."""
        if self.total is None:
            return None
        return min(1.0, max(0.0, self.done / self.total))


class _Reporting(Protocol):
    progress: Progress | None


current_task: ContextVar[_Reporting | None] = ContextVar("trio_background_task", default=None)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def report_progress(done: float, total: float | None = None, *, message: str | None = None) -> None:
    """Record the progress of the background task that is running this code.

    Works in async tasks (and the tasks they start) and in sync tasks (in
    their worker thread). The latest value is what the supervisor, the
    monitor and the task's record show.

    Args:
        done: Units done so far (>= 0).
        total: Units in all (> 0), or None if unknown.
        message: A short note on the current step.

    Raises:
        RuntimeError: Called outside a background task.
        ValueError: ``done`` is negative or ``total`` is not positive.
        TypeError: ``done`` or ``total`` is not a number.
    """
    task = current_task.get()
    if task is None:
        raise RuntimeError(
            "report_progress() was called outside a background task: call it from a "
            "function run by add_task() (sync or async), while it runs"
        )
    if not _is_number(done):
        raise TypeError(f"report_progress() done must be a number, got {type(done).__qualname__}")
    if not (0 <= done < math.inf):
        raise ValueError(f"report_progress() done must be a finite number >= 0, got {done!r}")
    if total is not None:
        if not _is_number(total):
            raise TypeError(
                f"report_progress() total must be a number or None, got {type(total).__qualname__}"
            )
        if not (0 < total < math.inf):
            raise ValueError(f"report_progress() total must be a finite number > 0, got {total!r}")
    task.progress = Progress(done, total, message)
