"""Tasks and batches: what a handler adds.

A :class:`BackgroundTask` is one call (a function and its arguments) and the
handle to what became of it. A :class:`BackgroundTasks` is the ordered batch
a request collects. Input is checked when a task is added, never later: a
task that would fail for a reason visible at ``add_task`` time raises
``TypeError`` there, where the mistake is.

This module only *describes* work. Starting a task, deciding its final state
and recording it is the runner's job (``_runner.py``), for every kind of
task and every kind of batch: a batch hands each task it is given to its
runner (``admit``), and ``await tasks()`` is a runner too.
"""

from __future__ import annotations

import enum
import functools
import inspect
from contextvars import ContextVar
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_GENERATOR
from types import FunctionType
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, Protocol

import trio

from ._policy import POLICY_ATTRIBUTE, TaskPolicy

if TYPE_CHECKING:
    import weakref
    from collections.abc import Callable, Iterable

    from ._progress import Progress

P = ParamSpec("P")

_GENERATOR_FLAGS = CO_GENERATOR | CO_ASYNC_GENERATOR

__all__ = [
    "CLEANUP",
    "SEQUENCE",
    "SOON",
    "BackgroundTask",
    "BackgroundTasks",
    "Runs",
    "TaskState",
    "adopting",
    "released",
]

# How a task runs in its batch (BackgroundTask.kind).
SEQUENCE = 0  # add_task: one after another, in order
SOON = 1  # start_soon: beside the sequence
CLEANUP = 2  # add_cleanup: after the rest, even when the app failed


class TaskState(str, enum.Enum):
    """Where a background task is in its life.

    A task starts ``pending`` and ends in exactly one of the final states
    (every state but ``pending`` and ``running``). Each value is the
    lower-case string of its name.
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
        """True for the states a task ends in."""
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


def released(*args: object, **kwargs: object) -> None:
    """What an ended task's ``func`` becomes: it let go of the real one."""
    raise RuntimeError(
        "this background task has ended and let go of its function and arguments; "
        "a task runs once: add it again to run it again"
    )


class Runs(Protocol):
    """The runner of a batch, as the batch and its tasks see it (``_runner.Runner``)."""

    def admit(self, task: BackgroundTask) -> BackgroundTask: ...

    def cancel(self, task: BackgroundTask) -> bool: ...

    async def wait(self, task: BackgroundTask) -> None: ...


class _Adopting(Protocol):
    """The request being handled: it takes tasks awaited as Starlette's ``background=``."""

    def adopt(self, task: BackgroundTask) -> bool: ...

    def owns(self, batch: BackgroundTasks) -> bool: ...


# Set by the middleware while the app handles a request (see BackgroundTask.__call__):
# a weak reference, so that a task a handler starts elsewhere keeps no request alive.
adopting: ContextVar[weakref.ReferenceType[_Adopting] | None] = ContextVar(
    "trio_background_request", default=None
)


def _adopter() -> _Adopting | None:
    ref = adopting.get()
    return None if ref is None else ref()


class BackgroundTask:
    """One background call, and the handle to what became of it.

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
        kind: How it runs in its batch: ``SEQUENCE`` (``add_task``), ``SOON``
            (``start_soon``) or ``CLEANUP`` (``add_cleanup``).
        state: The :class:`TaskState`.
        error: The exception the task raised, or None.
        reason: Why a task was skipped, cancelled or abandoned, or None.
        id: ``"<batch>.<index>"`` once the task belongs to a supervised batch
            (at ``add_task`` in a request), or None.
        progress: The last :class:`Progress` the task reported, or None.
        started_at: When it started, on trio's clock, or None.
        engine_id: The durable engine's id of a handed-off task, or None.
        policy: The :class:`~trio_background.TaskPolicy` its function carries
            (see :func:`~trio_background.task`), or None.
        attempts: How many times it has run (more than 1 with retries).
        dedup_key: Its deduplication key (from the policy's ``key``), or None.
        value: What the function returned, once it completed, else None
            (:attr:`result` is the checked way to read it).

    Memory:
        When the task ends (whatever its state) it lets go of ``func``,
        ``args`` and ``kwargs``, so a large argument is freed while the rest
        of its batch runs.
    """

    __slots__ = (
        "_runner",
        "args",
        "attempts",
        "dedup_key",
        "durable",
        "engine_id",
        "error",
        "func",
        "id",
        "index",
        "is_async",
        "kind",
        "kwargs",
        "name",
        "policy",
        "progress",
        "reason",
        "started_at",
        "state",
        "value",
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
        self.kind = SEQUENCE
        self.state: TaskState = TaskState.PENDING
        self.error: BaseException | None = None
        self.reason: str | None = None
        self.id: str | None = None
        self.index = 0
        self.progress: Progress | None = None
        self.started_at: float | None = None
        self.engine_id: str | None = None
        self.durable = False
        self.value: object = None
        policy = getattr(_unwrap(func), POLICY_ATTRIBUTE, None)
        self.policy = policy if isinstance(policy, TaskPolicy) else None
        self.attempts = 0
        self.dedup_key: str | None = None
        # The runner that owns the task once it is admitted (the handle's way in).
        self._runner: Runs | None = None

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name} {self.state.value}>"

    @property
    def result(self) -> object:
        """What the function returned, once the task is ``completed``.

        Raises:
            RuntimeError: The task has not completed (it is pending, running,
                or ended in another state).
        """
        if self.state is not TaskState.COMPLETED:
            raise RuntimeError(
                f"background task {self.name} has no result: it is {self.state.value}, "
                "and only a completed task has one; await task.wait() first"
            )
        return self.value

    def bind(self, runner: Runs) -> None:
        """For the runner: it owns this task from now on.

        Raises:
            RuntimeError: The task ran already, or belongs to a batch.
        """
        if self.state is not TaskState.PENDING or self._runner is not None:
            raise RuntimeError(
                f"background task {self.name} already belongs to a batch or ran "
                f"(state: {self.state.value}); a task runs once: add it again to run it again"
            )
        self._runner = runner

    def cancel(self) -> bool:
        """Cancel the task: a pending one ends ``skipped``, a running one is cut.

        A running async task is cancelled (``cancelled``); a running sync task
        is abandoned in its thread (``abandoned``). A task that has ended is
        left as it is.

        Returns:
            Whether this changed anything.
        """
        runner = self._runner
        if runner is None:
            if self.state is not TaskState.PENDING:
                return False
            self.state = TaskState.SKIPPED
            self.reason = "cancelled by the app"
            self.func, self.args, self.kwargs = released, (), {}
            return True
        return runner.cancel(self)

    async def wait(self) -> None:
        """Return once the task has a final state (at once if it has one).

        Never raises what the task raised: read ``state``, ``error`` and
        :attr:`result`.
        """
        runner = self._runner
        if runner is None or self.state.is_final:
            await trio.lowlevel.checkpoint()
            if not self.state.is_final:
                raise RuntimeError(
                    f"background task {self.name} belongs to no batch that runs it: add it "
                    "to a batch (add_task) or run it (await task()) before waiting for it"
                )
            return
        await runner.wait(self)

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
        adopter = _adopter()
        if adopter is not None and adopter.adopt(self):
            return
        if self.state is not TaskState.PENDING:
            raise RuntimeError(
                f"background task {self.name} already ran (state: {self.state.value}); "
                "a task runs once: add it again to run it again"
            )
        if self._runner is not None:
            raise RuntimeError(
                f"background task {self.name} belongs to a batch, which runs it; "
                "await task.wait() to wait for it"
            )
        await BackgroundTasks([self])()


class BackgroundTasks:
    """An ordered batch of background tasks.

    In a request served through :class:`BackgroundTasksMiddleware`, the batch
    runs after the response is complete, in a nursery inside the request's
    own task: the tasks of :meth:`add_task` one after another in the order
    added, those of :meth:`start_soon` beside them, then those of
    :meth:`add_cleanup`. The same object works standalone: ``await tasks()``
    runs it now.

    A batch is always true, even when empty (as FastAPI's is): ``bg or
    BackgroundTasks()`` keeps the request's batch.

    Args:
        tasks: Tasks to start the batch with.

    Raises:
        TypeError: An item of ``tasks`` is not a :class:`BackgroundTask`.
    """

    __slots__ = ("__weakref__", "_runner", "tasks")

    def __init__(self, tasks: Iterable[BackgroundTask] | None = None) -> None:
        self.tasks: list[BackgroundTask] = list(tasks) if tasks else []
        for task in self.tasks:
            if not isinstance(task, BackgroundTask):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(
                    f"BackgroundTasks(tasks=...) takes BackgroundTask objects, got "
                    f"{type(task).__qualname__}; build them with BackgroundTask(func, *args) "
                    "or use add_task(func, *args)"
                )
        # The runner that owns the batch, once one does (a request's, or await tasks()).
        self._runner: Runs | None = None

    def __repr__(self) -> str:
        return f"<BackgroundTasks {len(self.tasks)} tasks>"

    def __len__(self) -> int:
        return len(self.tasks)

    def __bool__(self) -> bool:
        return True

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: object) -> NoReturn:
        # Pydantic asks for a schema when FastAPI takes a parameter typed with
        # the bare class for a request field (the dependency is missing): say
        # what to write, where FastAPI would say "Invalid args for response field!".
        raise TypeError(
            "a trio_background.BackgroundTasks parameter or attribute without its dependency: "
            "FastAPI would read it from the request. In a handler, type it "
            "trio_background.fastapi.BackgroundTasks; in a class-based view (fastapi-utils' "
            "cbv reads attributes with typing.get_type_hints, which drops the dependency), "
            "write `background_tasks: BackgroundTasks = Depends(get_background_tasks)`, both "
            "from trio_background.fastapi"
        ) from None  # pydantic's own lookup failure is no news to the user

    def bind(self, runner: Runs) -> None:
        """For the runner: it owns this batch (and every task added later).

        Raises:
            RuntimeError: The batch belongs to a runner already.
        """
        if self._runner is not None:
            raise RuntimeError(
                "this batch already belongs to a runner (a request's batch is run by the "
                "middleware, and a batch runs once): use a new BackgroundTasks()"
            )
        self._runner = runner

    def add_task(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to run after the response, in order.

        A task added while the batch runs (for example by one of its own
        tasks, or from a thread) runs after the tasks already in it.

        Returns:
            The :class:`BackgroundTask` created, to inspect its state later;
            or, when the function's policy has a ``key`` and a task with the
            same key is pending or running, that task.

        Raises:
            TypeError: ``func`` cannot be run as a task (see
                :class:`BackgroundTask`).
            RuntimeError: The batch has already finished running, so the task
                would never run.
        """
        return self._admit(BackgroundTask(func, *args, **kwargs), SEQUENCE)

    def start_soon(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to run after the response, concurrently.

        The task starts when the batch starts (at once if it is running),
        beside the :meth:`add_task` sequence, in the same nursery and under
        the same deadline, records and error handling.

        Returns:
            The :class:`BackgroundTask` created.

        Raises:
            TypeError: As :meth:`add_task`.
            RuntimeError: As :meth:`add_task`.
        """
        return self._admit(BackgroundTask(func, *args, **kwargs), SOON)

    def add_cleanup(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to run after the batch's other tasks, always.

        Cleanup tasks run in the order added, after the :meth:`add_task` and
        :meth:`start_soon` tasks have ended, even when the app raised before
        its response was over or a task failed under ``on_error="stop"``.
        Like every task, never after the shutdown deadline (then ``skipped``).

        Returns and raises as :meth:`add_task`.
        """
        return self._admit(BackgroundTask(func, *args, **kwargs), CLEANUP)

    def append(self, task: BackgroundTask) -> BackgroundTask:
        """Add a task made elsewhere (a :class:`BackgroundTask`), to run in order.

        What Starlette's ``Response(background=task)`` does in a request
        served through the middleware.

        Returns:
            ``task``, or the task in its place (as :meth:`add_task`).

        Raises:
            RuntimeError: The task ran already or belongs to a batch, or the
                batch has finished running.
        """
        return self._admit(task, task.kind)

    def _admit(self, task: BackgroundTask, kind: int) -> BackgroundTask:
        task.kind = kind
        runner = self._runner
        if runner is None:
            self.tasks.append(task)
        else:
            task.bind(runner)
            try:
                return runner.admit(task)
            except BaseException:
                task._runner = None  # pyright: ignore[reportPrivateUsage]  # same module; not taken
                raise
        return task

    async def __call__(self) -> None:
        """Run the pending tasks now (the Starlette protocol).

        The :meth:`add_task` tasks run in order (also those they add), the
        :meth:`start_soon` ones beside them, then the cleanups. In a request
        served through the middleware, a batch awaited after the response is
        complete (Starlette's ``Response(background=tasks)``) joins the
        request's batch instead.

        Raises:
            RuntimeError: The batch already ran, or belongs to a request.
            BaseException: The first exception a task raised (in an
                exception group when the batch has :meth:`start_soon` tasks);
                the tasks after it end ``skipped``, cleanups run.
        """
        adopter = _adopter()
        if adopter is not None:
            if adopter.owns(self):
                return  # the request's own batch: the middleware runs it
            if self._runner is None and all(
                adopter.adopt(task) for task in self.tasks if task.state is TaskState.PENDING
            ):
                self.tasks.clear()
                return
        # The runner runs it; imported here because the runner imports this module.
        from ._runner import run_now

        await run_now(self)
