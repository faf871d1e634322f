"""Tasks and batches: what a handler adds, and how one task runs.

A :class:`BackgroundTask` is one call (a function and its arguments) with a
:class:`TaskState`. A :class:`BackgroundTasks` is the ordered batch a request
collects. Input is checked when a task is added, never later: a task that
would fail for a reason visible at ``add_task`` time raises ``TypeError``
there, where the mistake is.

This module knows how to run *one* task (async in the calling task, sync in a
worker thread). Running a batch under a policy, with records and deadlines, is
the runner's job (``_runner.py``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
import sys
import threading
from contextlib import contextmanager
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_GENERATOR
from types import FunctionType
from typing import TYPE_CHECKING, Any, ParamSpec

import trio
import trio.testing

from ._progress import Progress, current_task

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

P = ParamSpec("P")

_GENERATOR_FLAGS = CO_GENERATOR | CO_ASYNC_GENERATOR

__all__ = ["BackgroundTask", "BackgroundTasks", "TaskState"]


class TaskState(str, enum.Enum):
    """Where a background task is in its life.

    A task starts ``pending`` and ends in exactly one of the five final
    states. Each value is the lower-case string of its name.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """True for the five states a task ends in."""
        return self not in (TaskState.PENDING, TaskState.RUNNING)


def _unwrap(func: object) -> object:
    while isinstance(func, functools.partial):
        func = func.func  # pyright: ignore[reportUnknownMemberType]
    return func


def _describe(func: object) -> str:
    target = _unwrap(func)
    name = getattr(target, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(target).__qualname__


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` returns a coroutine to await.

    Covers coroutine functions, :func:`functools.partial` of them (nested too),
    and objects whose ``__call__`` is a coroutine function.
    """
    target = _unwrap(func)
    if inspect.iscoroutinefunction(target):
        return True
    if inspect.isclass(target):
        return False
    return inspect.iscoroutinefunction(getattr(target, "__call__", None))  # noqa: B004


def _check_task_function(func: object) -> None:
    """Raise ``TypeError`` for anything ``add_task`` cannot run later."""
    if inspect.iscoroutine(func):
        name = func.__qualname__
        # Close it now: the caller made it and nobody else will await it, so
        # without this Python would also warn "coroutine was never awaited".
        func.close()
        raise TypeError(
            f"add_task() got a coroutine object ({name}(...)), which would never run; "
            f"pass the function and its arguments: add_task({name}, arg, ...) "
            f"instead of add_task({name}(arg, ...))"
        )
    if not callable(func):
        if inspect.isawaitable(func):
            raise TypeError(
                f"add_task() got an awaitable {type(func).__qualname__} object, not a function; "
                "pass the async function and its arguments: add_task(func, arg, ...)"
            )
        raise TypeError(
            f"add_task() needs a function to call, got {type(func).__qualname__} {func!r}; "
            "pass the function and its arguments: add_task(func, arg, ...)"
        )
    target = _unwrap(func)
    name = _describe(func)
    if inspect.isasyncgenfunction(target):
        raise TypeError(
            f"add_task() got an async generator function ({name}); a background task "
            "is awaited once and nothing would iterate the generator: pass an async "
            f"function that consumes it, e.g. async def run(): async for _ in {name}(): ..."
        )
    if inspect.isgeneratorfunction(target):
        raise TypeError(
            f"add_task() got a generator function ({name}); a background task is called "
            "once and nothing would iterate the generator: pass a function that "
            f"consumes it, e.g. def run(): for _ in {name}(): ..."
        )


class BackgroundTask:
    """One background call: a function and the arguments to call it with.

    Args:
        func: A sync or async function (or any callable). Async ones are
            awaited in the request's task; sync ones run in a worker thread.
        *args: Positional arguments for ``func``.
        **kwargs: Keyword arguments for ``func``.

    Raises:
        TypeError: ``func`` is not callable, is a coroutine object (the result
            of calling an async function instead of the function), or is a
            (async) generator function.

    Attributes:
        func: The callable.
        args: Its positional arguments.
        kwargs: Its keyword arguments.
        name: The function's qualified name, for logs and reports.
        is_async: Whether the task is awaited (True) or run in a thread.
        state: The :class:`TaskState`.
        error: The exception the task raised, or None.
        reason: Why a task was skipped, cancelled or abandoned, or None.
        id: ``"<batch>.<index>"`` once the task belongs to a supervised batch
            (at ``add_task`` in a request, else when its batch starts), or None.
        progress: The last :class:`Progress` the task reported, or None.
        started_at: When it started, on trio's clock, or None.
    """

    __slots__ = (
        "args",
        "error",
        "func",
        "id",
        "is_async",
        "kwargs",
        "name",
        "progress",
        "reason",
        "started_at",
        "state",
    )

    def __init__(self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        if type(func) is FunctionType and not func.__code__.co_flags & _GENERATOR_FLAGS:
            # The common case, checked by code flags alone: inspect's general
            # path costs several microseconds per task.
            self.name: str = func.__qualname__
            self.is_async: bool = bool(func.__code__.co_flags & CO_COROUTINE) or (
                is_async_callable(func) if hasattr(func, "_is_coroutine_marker") else False
            )
        else:
            _check_task_function(func)
            self.name = _describe(func)
            self.is_async = is_async_callable(func)
        self.func: Callable[..., object] = func
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs
        self.state: TaskState = TaskState.PENDING
        self.error: BaseException | None = None
        self.reason: str | None = None
        self.id: str | None = None
        self.progress: Progress | None = None
        self.started_at: float | None = None

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name} {self.state.value}>"

    async def __call__(self) -> None:
        """Run the task now, in this task, and re-raise what it raises.

        This is the Starlette protocol (``await task()``). Inside the
        middleware tasks are run by the runner instead, which logs failures
        and never lets them out.

        Raises:
            RuntimeError: The task already ran.
            Exception: Whatever the function raised (the task ends ``failed``).
        """
        await self.run(limiter=None)

    async def run(self, *, limiter: trio.CapacityLimiter | None) -> None:
        """Run the task once and set its final state.

        Args:
            limiter: The limiter for a sync task's thread; None means trio's
                default limiter.

        Raises:
            RuntimeError: The task is not pending (a task runs once).
            Exception: Whatever the task raised; the state is ``failed``.

        Cancellation:
            An async task that is cancelled ends ``cancelled``. A sync task
            whose thread is running is abandoned (``abandoned``); one that was
            still waiting for a thread ends ``skipped``. ``trio.Cancelled``
            is re-raised in every case.
        """
        if self.state is not TaskState.PENDING:
            raise RuntimeError(
                f"background task {self.name} already ran (state: {self.state.value}); "
                "a task runs once: add it again to run it again"
            )
        self.state = TaskState.RUNNING
        self.started_at = trio.current_time()
        token = current_task.set(self)
        try:
            if self.is_async:
                await self._run_async()
            else:
                await self._run_sync(limiter)
        except BaseException as exc:
            if self.state is TaskState.RUNNING:
                self._settle(exc)
            raise
        finally:
            current_task.reset(token)
        self.state = TaskState.COMPLETED

    async def _run_async(self) -> None:
        result = self.func(*self.args, **self.kwargs)
        await result  # type: ignore[misc]  # is_async says it is awaitable

    async def _run_sync(self, limiter: trio.CapacityLimiter | None) -> None:
        gate = _ThreadGate(self)
        with _autojump_held():
            try:
                await trio.to_thread.run_sync(gate.call, abandon_on_cancel=True, limiter=limiter)
            except trio.Cancelled:
                if gate.withdraw():
                    self.state = TaskState.ABANDONED
                    self.reason = (
                        "cancelled while its thread was running; the thread was left to "
                        "finish on its own"
                    )
                else:
                    self.state = TaskState.SKIPPED
                    self.reason = "cancelled before its thread started"
                raise

    def _settle(self, exc: BaseException) -> None:
        """Set the final state for a run that ended with ``exc``."""
        if _is_cancellation(exc):
            self.state = TaskState.CANCELLED
            self.reason = "cancelled while running"
        else:
            self.state = TaskState.FAILED
            self.error = exc

    def skip(self, reason: str) -> None:
        """Mark a pending task ``skipped`` (it will never run) and say why."""
        if self.state is TaskState.PENDING:
            self.state = TaskState.SKIPPED
            self.reason = reason


class _ThreadGate:
    """Runs a sync task in its thread, unless trio already gave up on it.

    When the thread is abandoned before the function started (cancelled while
    waiting for a limiter token or for the thread to pick it up), the function
    must not start later behind trio's back: the lock makes "started" and
    "abandoned" exclusive, so the task's final state is true.
    """

    __slots__ = ("_lock", "_started", "_task", "_withdrawn")

    def __init__(self, task: BackgroundTask) -> None:
        self._task = task
        self._lock = threading.Lock()
        self._started = False
        self._withdrawn = False

    def call(self) -> None:
        with self._lock:
            if self._withdrawn:
                return
            self._started = True
        task = self._task
        result = task.func(*task.args, **task.kwargs)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"background task {task.name} is a sync function that returned an awaitable "
                f"({type(result).__qualname__}), which would never run; pass the async "
                "function itself to add_task() (add_task(func, arg) rather than "
                "add_task(lambda: func(arg)))"
            )

    def withdraw(self) -> bool:
        """Give up on the call; return True if the function had started."""
        with self._lock:
            self._withdrawn = True
            return self._started


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        return rest is None
    return False


# Under trio.testing.MockClock with autojump, the clock jumps whenever every
# trio task is blocked, and a task waiting for a worker thread counts as
# blocked. A sync background task doing two real seconds of work would then
# see a 30 s drain deadline fire at once. While any task's thread runs we hold
# the autojump (virtual time stands still: a thread's work takes no virtual
# time) and give it back when the last thread returns.
_AUTOJUMP_HOLD: trio.lowlevel.RunVar[list[float]] = trio.lowlevel.RunVar("trio_background_autojump")


@contextmanager
def _autojump_held() -> Generator[None, None, None]:
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    try:
        hold = _AUTOJUMP_HOLD.get()
    except LookupError:
        hold = [0, math.inf]  # [threads running, saved threshold]
        _AUTOJUMP_HOLD.set(hold)
    if hold[0] == 0:
        hold[1] = clock.autojump_threshold
        clock.autojump_threshold = math.inf
    hold[0] += 1
    try:
        yield
    finally:
        hold[0] -= 1
        if hold[0] == 0:
            clock.autojump_threshold = hold[1]


class BackgroundTasks:
    """An ordered batch of background tasks.

    In a request served through :class:`BackgroundTasksMiddleware`, the batch
    runs after the response is complete, one task after another in the order
    added. The same object works standalone: ``await tasks()`` runs it now.

    Args:
        tasks: Tasks to start the batch with.

    Raises:
        TypeError: An item of ``tasks`` is not a :class:`BackgroundTask`.
    """

    __slots__ = ("_closed", "number", "tasks")

    def __init__(self, tasks: Iterable[BackgroundTask] | None = None) -> None:
        self.tasks: list[BackgroundTask] = list(tasks) if tasks else []
        for task in self.tasks:
            if not isinstance(task, BackgroundTask):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(
                    f"BackgroundTasks(tasks=...) takes BackgroundTask objects, got "
                    f"{type(task).__qualname__}; build them with BackgroundTask(func, *args) "
                    "or use add_task(func, *args)"
                )
        self._closed: str | None = None
        # Set by the supervisor that owns the batch; task ids derive from it.
        self.number: int | None = None

    def __repr__(self) -> str:
        return f"<BackgroundTasks {len(self.tasks)} tasks>"

    def assign_ids(self, number: int) -> None:
        """Number the batch and give its tasks (and later ones) their ids."""
        self.number = number
        for index, task in enumerate(self.tasks):
            task.id = f"{number}.{index}"

    def __len__(self) -> int:
        return len(self.tasks)

    def add_task(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to run after the response.

        A task added while the batch runs (for example by one of its own
        tasks) runs after the tasks already in it.

        Returns:
            The :class:`BackgroundTask` created, to inspect its state later.

        Raises:
            TypeError: ``func`` cannot be run as a task (see
                :class:`BackgroundTask`).
            RuntimeError: The batch has already finished running, so the task
                would never run.
        """
        if self._closed is not None:
            name = _describe(func)
            if inspect.iscoroutine(func):
                func.close()
            raise RuntimeError(
                f"cannot add {name} to this batch: {self._closed}, so it would never run; "
                "add tasks while the request is being handled, or from a task of the batch "
                "while it runs"
            )
        task = BackgroundTask(func, *args, **kwargs)
        if self.number is not None:
            task.id = f"{self.number}.{len(self.tasks)}"
        self.tasks.append(task)
        return task

    async def __call__(self) -> None:
        """Run the pending tasks now, in order (the Starlette protocol).

        Raises:
            Exception: The first exception a task raised; the tasks after it
                end ``skipped`` and the batch is finished.
        """
        index = 0
        try:
            while index < len(self.tasks):
                task = self.tasks[index]
                index += 1
                if task.state is TaskState.PENDING:
                    await task.run(limiter=None)
        finally:
            for task in self.tasks[index:]:
                task.skip("an earlier task of the batch raised")
            self.close("it has already run")

    def close(self, why: str) -> None:
        """Refuse further tasks; ``why`` completes "cannot add ...: <why>"."""
        if self._closed is None:
            self._closed = why

    @property
    def closed(self) -> bool:
        """Whether the batch still accepts tasks."""
        return self._closed is not None

    def discard(self, reason: str) -> None:
        """Skip every pending task with ``reason`` and close the batch.

        The FastAPI dependency calls this when the handler raises, so that, as
        in FastAPI, tasks added by a failed handler do not run.
        """
        for task in self.tasks:
            task.skip(reason)
        self.close(f"it was discarded ({reason})")
