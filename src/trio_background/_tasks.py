"""Tasks and batches: what a handler adds, and how one task runs.

A :class:`BackgroundTask` is one call (a function and its arguments) with a
:class:`TaskState`. A :class:`BackgroundTasks` is the ordered batch a request
collects. Input is checked when a task is added, never later: a task that
would fail for a reason visible at ``add_task`` time raises ``TypeError``
there, where the mistake is.

This module knows how to run *one* task (async in the calling task, sync in a
worker thread through ``_threads.py``) and is the one place that decides a
task's final state. Running a batch under a policy, with records and
deadlines, is the runner's job (``_runner.py``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import sys
from contextvars import ContextVar
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_GENERATOR
from types import FunctionType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol

import trio

from ._progress import Progress, current_task
from ._threads import ThreadOutcome, run_in_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

P = ParamSpec("P")

_GENERATOR_FLAGS = CO_GENERATOR | CO_ASYNC_GENERATOR

__all__ = ["BackgroundTask", "BackgroundTasks", "TaskState", "adopting", "failure_of"]


class TaskState(str, enum.Enum):
    """Where a background task is in its life.

    A task starts ``pending`` and ends in exactly one of the six final
    states. Each value is the lower-case string of its name.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"
    HANDED_OFF = "handed_off"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """True for the six states a task ends in."""
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


def _released(*args: object, **kwargs: object) -> None:
    raise RuntimeError(
        "this background task has ended and let go of its function and arguments; "
        "a task runs once: add it again to run it again"
    )


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        return rest is None
    return False


def failure_of(exc: BaseException) -> BaseException | None:
    """The part of ``exc`` that is the task's own failure, or None for a pure cancellation.

    An exception group is split: its ``trio.Cancelled`` part belongs to
    whoever cancelled, the rest (a group, or the one exception) is the failure.
    """
    if isinstance(exc, trio.Cancelled):
        return None
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        return rest  # pyright: ignore[reportUnknownVariableType]
    return exc


class _Adopter(Protocol):
    """The request being handled, which takes tasks run as ``background=``."""

    def adopt(self, task: BackgroundTask) -> bool: ...

    def owns(self, batch: BackgroundTasks) -> bool: ...


# Set by the middleware while the app handles a request (see BackgroundTask.__call__).
adopting: ContextVar[_Adopter | None] = ContextVar("trio_background_request", default=None)


class _Owner(Protocol):
    """What a supervised batch tells about its tasks (the supervisor's flight)."""

    def added(self, task: BackgroundTask) -> None: ...


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
        func: The callable (released when the task ends).
        args: Its positional arguments (released when the task ends).
        kwargs: Its keyword arguments (released when the task ends).
        name: The function's qualified name, for logs and reports.
        is_async: Whether the task is awaited (True) or run in a thread.
        state: The :class:`TaskState`.
        error: The exception the task raised, or None.
        reason: Why a task was skipped, cancelled or abandoned, or None.
        id: ``"<batch>.<index>"`` once the task belongs to a supervised batch
            (at ``add_task`` in a request, else when its batch starts), or None.
        progress: The last :class:`Progress` the task reported, or None.
        started_at: When it started, on trio's clock, or None.
        engine_id: The durable engine's id of a handed-off task, or None.

    Memory:
        When the task ends (whatever its state) it lets go of ``func``,
        ``args`` and ``kwargs``, so a large argument is freed while the rest
        of its batch runs.
    """

    __slots__ = (
        "_concurrent",
        "_durable",
        "_recorded",
        "args",
        "engine_id",
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
        self.engine_id: str | None = None
        self._concurrent = False
        self._durable = False
        self._recorded = False

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name} {self.state.value}>"

    async def __call__(self) -> None:
        """Run the task now, in this task, and re-raise what it raises.

        This is the Starlette protocol (``await task()``). In a request served
        through the middleware, a task awaited after the response is complete
        (Starlette's ``Response(background=task)``) joins the request's batch
        instead, and runs under the supervisor like one added with ``add_task``.

        Raises:
            RuntimeError: The task already ran.
            BaseException: Whatever the function raised (the task ends ``failed``).
        """
        adopter = adopting.get()
        if adopter is not None and adopter.adopt(self):
            return
        await self._run(limiter=None)

    async def _run(
        self,
        *,
        limiter: trio.CapacityLimiter | None,
        now: Callable[[], float] | None = None,
    ) -> None:
        """Run the task once and set its final state; re-raise what it raised.

        ``now`` is the run's clock (``trio.current_time`` when None).

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
        self.started_at = trio.current_time() if now is None else now()
        token = current_task.set(self)
        try:
            if self.is_async:
                await self.func(*self.args, **self.kwargs)  # type: ignore[misc]  # is_async says so
            else:
                await self._run_sync(limiter)
        except BaseException as exc:
            if self.state is TaskState.RUNNING:
                self._settle(exc)
            raise
        finally:
            current_task.reset(token)
            # self._release(), inline: this runs for every task.
            self.func = _released
            self.args = ()
            self.kwargs = {}
        self.state = TaskState.COMPLETED

    async def _run_sync(self, limiter: trio.CapacityLimiter | None) -> None:
        outcome = ThreadOutcome()
        try:
            await run_in_thread(
                self.func, self.args, self.kwargs, name=self.name, limiter=limiter, outcome=outcome
            )
        except trio.Cancelled:
            if outcome.started_at is not None:
                self.state = TaskState.ABANDONED
                self.reason = (
                    "cancelled while its thread was running; the thread was left to "
                    "finish on its own"
                )
            else:
                self.started_at = None
                self.state = TaskState.SKIPPED
                self.reason = "cancelled before its thread started"
            raise
        finally:
            if outcome.started_at is not None:
                self.started_at = outcome.started_at

    def _settle(self, exc: BaseException) -> None:
        """Set the final state for a run that ended with ``exc``."""
        if _is_cancellation(exc):
            self.state = TaskState.CANCELLED
            self.reason = "cancelled while running"
        else:
            self.state = TaskState.FAILED
            self.error = failure_of(exc)

    def _release(self) -> None:
        self.func = _released
        self.args = ()
        self.kwargs = {}

    def _skip(self, reason: str) -> bool:
        """Mark a pending task ``skipped`` (it will never run); False if it was not pending.

        The one place a task is skipped: every path that gives up on a task
        before it ran comes here with its reason.
        """
        if self.state is not TaskState.PENDING:
            return False
        self.state = TaskState.SKIPPED
        self.reason = reason
        self._release()
        return True

    def _hand_off(self, engine_id: str) -> None:
        self.state = TaskState.HANDED_OFF
        self.engine_id = engine_id
        self._release()


class BackgroundTasks:
    """An ordered batch of background tasks.

    In a request served through :class:`BackgroundTasksMiddleware`, the batch
    runs after the response is complete, in a nursery inside the request's
    own task: the tasks of :meth:`add_task` one after another in the order
    added, those of :meth:`start_soon` beside them. The same object works
    standalone: ``await tasks()`` runs it now.

    Args:
        tasks: Tasks to start the batch with.

    Raises:
        TypeError: An item of ``tasks`` is not a :class:`BackgroundTask`.
    """

    __slots__ = ("_closed", "_number", "_owner", "tasks")

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
        self._number: int | None = None
        self._owner: _Owner | None = None

    def __repr__(self) -> str:
        return f"<BackgroundTasks {len(self.tasks)} tasks>"

    def __len__(self) -> int:
        return len(self.tasks)

    def add_task(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to run after the response, in order.

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
        self._check_open(func)
        task = BackgroundTask(func, *args, **kwargs)
        self._append(task)
        return task

    def start_soon(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to run after the response, concurrently.

        The task starts when the batch starts (at once if it is running),
        beside the :meth:`add_task` sequence, in the same nursery and under
        the same deadline, records and error handling. Standalone
        (``await tasks()``) it runs concurrently with the sequence too.

        Returns:
            The :class:`BackgroundTask` created.

        Raises:
            TypeError: As :meth:`add_task`.
            RuntimeError: As :meth:`add_task`.
        """
        self._check_open(func)
        task = BackgroundTask(func, *args, **kwargs)
        task._concurrent = True  # pyright: ignore[reportPrivateUsage]
        self._append(task)
        return task

    def _check_open(self, func: object) -> None:
        if self._closed is not None:
            name = _describe(func)
            if inspect.iscoroutine(func):
                func.close()
            raise RuntimeError(
                f"cannot add {name} to this batch: {self._closed}, so it would never run; "
                "add tasks while the request is being handled, or from a task of the batch "
                "while it runs"
            )

    def _append(self, task: BackgroundTask) -> None:
        if self._number is not None:
            task.id = f"{self._number}.{len(self.tasks)}"
        self.tasks.append(task)
        if self._owner is not None:
            self._owner.added(task)

    def _attach(self, number: int, owner: _Owner | None) -> None:
        """Number the batch, give its tasks (and later ones) their ids, and its owner."""
        self._number = number
        self._owner = owner
        for index, task in enumerate(self.tasks):
            task.id = f"{number}.{index}"
            if owner is not None:
                owner.added(task)

    async def __call__(self) -> None:
        """Run the pending tasks now (the Starlette protocol).

        The :meth:`add_task` tasks run in order, the :meth:`start_soon` ones
        beside them. In a request served through the middleware, a batch
        awaited after the response is complete (Starlette's
        ``Response(background=tasks)``) joins the request's batch instead.

        Raises:
            BaseException: The first exception a task raised (in an
                exception group when the batch has :meth:`start_soon` tasks);
                the tasks after it end ``skipped`` and the batch is finished.
        """
        adopter = adopting.get()
        if adopter is not None:
            if adopter.owns(self):
                return  # the request's own batch: the middleware runs it
            if self._closed is None and all(
                adopter.adopt(task) for task in self.tasks if task.state is TaskState.PENDING
            ):
                self._close("its tasks joined the request's batch")
                return
        index = 0
        try:
            if any(task._concurrent for task in self.tasks):  # pyright: ignore[reportPrivateUsage]
                # Errors of concurrent tasks come out as an exception group.
                async with trio.open_nursery() as nursery:
                    while index < len(self.tasks):
                        task = self.tasks[index]
                        index += 1
                        if task.state is not TaskState.PENDING:
                            continue
                        if task._concurrent:  # pyright: ignore[reportPrivateUsage]
                            nursery.start_soon(functools.partial(task._run, limiter=None))  # pyright: ignore[reportPrivateUsage]
                        else:
                            await task._run(limiter=None)  # pyright: ignore[reportPrivateUsage]
            else:
                while index < len(self.tasks):
                    task = self.tasks[index]
                    index += 1
                    if task.state is TaskState.PENDING:
                        await task._run(limiter=None)  # pyright: ignore[reportPrivateUsage]
        finally:
            for task in self.tasks[index:]:
                task._skip("an earlier task of the batch raised")  # pyright: ignore[reportPrivateUsage]
            self._close("it has already run")

    def _close(self, why: str) -> None:
        """Refuse further tasks; ``why`` completes "cannot add ...: <why>"."""
        if self._closed is None:
            self._closed = why

    def _discard(self, reason: str) -> None:
        """Skip every pending task with ``reason`` and close the batch.

        The FastAPI dependency calls this when the handler raises, so that, as
        in FastAPI, tasks added by a failed handler do not run.
        """
        for task in self.tasks:
            task._skip(reason)  # pyright: ignore[reportPrivateUsage]
        self._close(f"it was discarded ({reason})")
