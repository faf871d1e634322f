"""Observers: how integrations (metrics, traces) see tasks, without the core knowing them.

An observer subclasses :class:`TaskObserver` and overrides what it needs. The
supervisor calls every registered observer at fixed points of a task's life;
an observer that raises is logged and never changes what happens to a task.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from types import TracebackType

    from ._asgi import Scope
    from ._records import TaskRecord
    from ._tasks import BackgroundTask

__all__ = ["Observers", "TaskObserver"]

logger = logging.getLogger("trio_background")


class TaskObserver:
    """Base class for observers of background tasks: every method does nothing."""

    def task_added(self, task: BackgroundTask) -> None:
        """A handler added ``task``; runs in the request's context (``task.id`` is set)."""

    def task_running(self, task: BackgroundTask) -> AbstractContextManager[None] | None:
        """``task`` is about to run in this trio task: a context manager returned is
        entered around the run, and sees what leaves it (``trio.Cancelled`` too)."""
        return None

    def task_ended(self, task: BackgroundTask, record: TaskRecord) -> None:
        """``task`` reached its final state; called once per task, whatever the state."""

    def response_complete(self, scope: Scope) -> None:
        """The response of the request ``scope`` was handed to the server."""

    def shutdown_begun(self, deadline_in: float) -> None:
        """Shutdown began; the batch deadline is ``deadline_in`` seconds away."""


class Observers:
    """The registered observers, called safely: a failing observer is logged."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[TaskObserver] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, observer: TaskObserver) -> None:
        if not isinstance(observer, TaskObserver):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"observers must be TaskObserver instances, got {type(observer).__qualname__}; "
                "subclass trio_background.TaskObserver and override the methods you need"
            )
        if observer not in self.items:
            self.items.append(observer)

    def task_added(self, task: BackgroundTask) -> None:
        for observer in self.items:
            try:
                observer.task_added(task)
            except Exception:
                logger.exception("observer %r failed in task_added", observer)

    def task_running(self, task: BackgroundTask) -> _Running:
        entered: list[AbstractContextManager[None]] = []
        for observer in self.items:
            try:
                manager = observer.task_running(task)
                if manager is not None:
                    manager.__enter__()
                    entered.append(manager)
            except Exception:
                logger.exception("observer %r failed in task_running", observer)
        return _Running(entered)

    def task_ended(self, task: BackgroundTask, record: TaskRecord) -> None:
        for observer in self.items:
            try:
                observer.task_ended(task, record)
            except Exception:
                logger.exception("observer %r failed in task_ended", observer)

    def response_complete(self, scope: Scope) -> None:
        for observer in self.items:
            try:
                observer.response_complete(scope)
            except Exception:
                logger.exception("observer %r failed in response_complete", observer)

    def shutdown_begun(self, deadline_in: float) -> None:
        for observer in self.items:
            try:
                observer.shutdown_begun(deadline_in)
            except Exception:
                logger.exception("observer %r failed in shutdown_begun", observer)


class _Running:
    """The observers' context managers around one run; never suppresses, never raises."""

    __slots__ = ("_entered",)

    def __init__(self, entered: list[AbstractContextManager[None]]) -> None:
        self._entered = entered

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        for manager in reversed(self._entered):
            try:
                manager.__exit__(exc_type, exc, traceback)
            except Exception:
                logger.exception("observer context %r failed on exit", manager)
        return False
