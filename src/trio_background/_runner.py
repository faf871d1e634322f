"""The runner: one batch, after its response, in a nursery of the request's task.

A :class:`Flight` is a batch as the supervisor sees it, from the moment the
request opened it to its last record. :func:`run_flight` runs it: a nursery
inside the request's own task (so a child of the server's connection) holds
the :meth:`~BackgroundTasks.add_task` sequence, one task after another, and
each :meth:`~BackgroundTasks.start_soon` task beside it, all under the
nursery's cancel scope, whose deadline is the shutdown deadline.

Every task becomes exactly one record. Nothing a task raises leaves the
runner (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` and groups
end it ``failed``); a cancellation (the deadline, or the server's own) is the
one thing that does, after every task of the batch has been recorded: the
task that was running ends ``cancelled`` (``abandoned`` if in a thread), the
rest ``skipped`` (or handed off, with ``spill``).
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import trio

from ._records import RawRecord, TaskRecord, build_record, format_error
from ._tasks import BackgroundTask, BackgroundTasks, TaskState, failure_of

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._backend import DurableBackend
    from ._ledger import Ledger
    from ._observe import Observers

__all__ = ["CutWatch", "ErrorHook", "Flight", "OnError", "Policy", "run_flight"]

logger = logging.getLogger("trio_background")

OnError = Literal["continue", "stop"]
ErrorHook = Callable[[TaskRecord, BaseException], "Awaitable[None] | None"]

# How long a spill (handing off tasks not started at the deadline) may take:
# inside the one second that serve() leaves between the deadline and the cut.
SPILL_TIMEOUT = 0.5

# How long after the deadline a cancelled task may take to end before its
# record says it overran (and a WARNING is logged).
OVERRUN_SLACK = 0.05


# The states of a task that ran: only those can overrun the deadline.
_RAN = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.ABANDONED})


class CutWatch(trio.abc.Instrument):
    """Tells a task that the deadline cut promptly from one that held it off.

    Cutting thousands of batches at once takes the event loop a while (trio
    delivers every cancellation in one pass, then each request unwinds), so
    a task cut at the deadline may end a second after it through no fault of
    its own. Installed on the trio run from the start of a shutdown, this
    counts the scheduler's passes (one I/O wait each) and notes when the
    current task step began. A task cut promptly ends in the pass in which
    the deadline expired, in a step that took no longer than the slack; one
    that shielded itself, waited on in its cleanup or blocked the loop does
    not.
    """

    def __init__(self, deadline: float, now: Callable[[], float]) -> None:
        self.deadline = deadline
        self.now = now
        self.passes = 0
        self.cut_pass = -1  # the first pass that began at or after the deadline
        self.step_pass = 0
        self.step_started = 0.0

    def after_io_wait(self, timeout: float) -> None:
        self.passes += 1
        if self.cut_pass < 0 and self.now() >= self.deadline:
            self.cut_pass = self.passes

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.cut_pass >= 0:
            self.step_pass = self.passes
            self.step_started = self.now()

    def cut_promptly(self, ended: float) -> bool:
        """Whether the task ending now (at ``ended``) was cut without holding the cut off."""
        return (
            self.cut_pass >= 0
            and self.step_pass == self.cut_pass
            and ended - self.step_started <= OVERRUN_SLACK
        )


class Policy:
    """What a batch's app asked for: the options of its (innermost) middleware."""

    __slots__ = ("backend", "error_hook", "on_error", "spill")

    def __init__(
        self,
        on_error: OnError,
        error_hook: ErrorHook | None,
        backend: DurableBackend | None,
        spill: bool,
    ) -> None:
        self.on_error: OnError = on_error
        self.error_hook = error_hook
        self.backend = backend
        self.spill = spill


class Flight:
    """One batch in flight: opened by its request, run after its response.

    Made by the supervisor, which gives it its ``ledger`` (where each ended
    task's record goes), the shared ``observers`` and ``on_close``, called
    once the batch has ended.
    """

    __slots__ = (
        "batch",
        "closed",
        "deadline",
        "ended",
        "epoch",
        "ledger",
        "limiter",
        "next",
        "now",
        "number",
        "nursery",
        "observers",
        "on_close",
        "policy",
        "ready_at",
        "request",
        "running",
        "sequencing",
        "stop_reason",
        "watch",
    )

    def __init__(
        self,
        number: int,
        request: str,
        batch: BackgroundTasks,
        *,
        policy: Policy,
        limiter: trio.CapacityLimiter,
        deadline: float,
        watch: CutWatch | None,
        observers: Observers,
        ledger: Ledger,
        on_close: Callable[[Flight], None],
    ) -> None:
        self.number = number
        self.request = request
        self.batch = batch
        self.policy = policy
        self.limiter = limiter
        # The shutdown deadline; while the batch runs, also its nursery's.
        self.deadline = deadline
        self.watch = watch  # how the cut at that deadline went (see CutWatch)
        self.observers = observers
        self.ledger = ledger
        self.on_close = on_close
        self.epoch = ledger.epoch
        # trio.current_time() without its wrappers: called several times per task.
        self.now = trio.lowlevel.current_clock().current_time
        self.ready_at: float | None = None
        self.ended = 0
        self.nursery: trio.Nursery | None = None
        self.running = False
        self.closed = False
        self.sequencing = False
        self.next = 0
        self.stop_reason: str | None = None

    # Called by the batch for each task added (the _Owner protocol); from a
    # worker thread too (a sync handler, or a sync task adding tasks).
    def added(self, task: BackgroundTask) -> None:
        backend = self.policy.backend
        if backend is not None and backend.is_durable(task.func):
            task._durable = True  # pyright: ignore[reportPrivateUsage]
        if self.observers._items:  # pyright: ignore[reportPrivateUsage]
            self.observers.task_added(task)
        if self.nursery is not None:
            index = len(self.batch.tasks) - 1
            in_trio_or_from_thread(lambda: self._start(task, index))

    def _start(self, task: BackgroundTask, index: int) -> None:
        nursery = self.nursery
        if nursery is None:
            return  # the batch ended meanwhile: _finish records the task
        if task._concurrent:  # pyright: ignore[reportPrivateUsage]
            nursery.start_soon(_run_concurrent, self, task, index)
        elif not self.sequencing:
            self.sequencing = True
            nursery.start_soon(_run_sequence, self)

    def set_deadline(self, deadline: float, watch: CutWatch | None) -> None:
        """Bring the batch's deadline to ``deadline`` (cut as ``watch`` sees) if that is sooner."""
        if deadline < self.deadline:
            self.deadline = deadline
            self.watch = watch
            nursery = self.nursery
            if nursery is None:
                return
            if deadline <= self.now():
                # Due already (cancel mode): cut now rather than through trio's
                # deadline heap, a push and a pop per batch when thousands wait.
                nursery.cancel_scope.cancel()
            else:
                nursery.cancel_scope.deadline = deadline

    def end(self, task: BackgroundTask, index: int, *, cut: bool = False) -> RawRecord | None:
        """Record ``task`` (in a final state) once, now; None if it was already."""
        if task._recorded:  # pyright: ignore[reportPrivateUsage]
            return None
        task._recorded = True  # pyright: ignore[reportPrivateUsage]
        self.ended += 1
        ended = self.now()
        state = task.state
        overrun: float | None = None
        late = ended - self.deadline
        if late >= 0 and state in _RAN and self._overran(state, late, ended):
            overrun = late
            cut = True
            if state is TaskState.COMPLETED:
                task.reason = (
                    "returned after the shutdown deadline: it shielded itself from the "
                    "cancellation, swallowed trio.Cancelled, or blocked the event loop"
                )
            logger.warning(
                "background task %s (%s) ended %s %.3fs after the shutdown deadline, for "
                "request %s: it shielded itself from the cancellation, swallowed "
                "trio.Cancelled, or blocked the event loop",
                task.name,
                task.id,
                task.state.value,
                overrun,
                self.request,
            )
        error = task.error
        skipped = state is TaskState.SKIPPED or state is TaskState.HANDED_OFF
        raw = RawRecord(
            task.name,
            state,
            None if error is None else format_error(error),
            task.reason,
            self.request,
            self.number,
            index,
            None if skipped else task.started_at,
            ended,
            task.progress,
            overrun,
            self.ready_at,
            task.engine_id,
        )
        self.ledger.write(raw, cut=cut)
        observers = self.observers
        if observers._items:  # pyright: ignore[reportPrivateUsage]
            observers.task_ended(task, build_record(raw, self.epoch))
        return raw

    def _overran(self, state: TaskState, late: float, ended: float) -> bool:
        """Whether a task that ran and ended ``late`` s after the deadline overran it.

        One that returned normally overran it, however little; one that ended
        by the cancellation did if it took longer than the slack trio needs to
        deliver it, unless the cut reached it late only because the loop was
        busy cutting (CutWatch).
        """
        if state is TaskState.COMPLETED:
            return True  # it did not let the cancellation end it
        if late <= OVERRUN_SLACK:
            return False
        watch = self.watch
        return watch is None or not watch.cut_promptly(ended)

    def pending_reason(self) -> str:
        if trio.current_time() >= self.deadline:
            return "the shutdown deadline passed before it started"
        return "the batch was cancelled before it started"


def in_trio_or_from_thread(call: Callable[[], None]) -> None:
    """``call()`` in trio: now if this is trio's thread, else through ``trio.from_thread``."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        trio.from_thread.run_sync(call)
    else:
        call()


async def run_flight(flight: Flight) -> None:
    """Run every task of ``flight`` and record each one.

    Error handling:
        A task that raises anything but a cancellation is logged on the
        ``trio_background`` logger with its name, the request and the
        traceback, ends ``failed``, and is passed to the error hook; then the
        next task runs, or, with ``on_error="stop"``, the rest of the sequence
        is skipped. A failing hook is logged.

    Cancellation:
        At the flight's deadline tasks not started end ``skipped`` (or are
        handed off, with ``spill``). ``trio.Cancelled`` from an enclosing
        scope is re-raised after every task of the batch has been recorded.
    """
    batch = flight.batch
    flight.ready_at = flight.now()
    flight.running = True
    try:
        # The nursery's own cancel scope is the batch's: its deadline is the
        # shutdown deadline (one scope per batch, not two).
        async with trio.open_nursery() as nursery:
            if flight.deadline != math.inf:  # setting a deadline is not free
                nursery.cancel_scope.deadline = flight.deadline
            flight.nursery = nursery
            for index, task in enumerate(batch.tasks):
                if task._concurrent:  # pyright: ignore[reportPrivateUsage]
                    nursery.start_soon(_run_concurrent, flight, task, index)
            flight.sequencing = True
            try:
                await _run_sequence(flight)
            except trio.Cancelled:
                if not nursery.cancel_scope.cancel_called:
                    raise
                # The batch's own deadline: its scope would absorb this on the
                # way out; absorbed here, trio need not record it as the body's
                # exception first (an exception group and two reprs per batch).
    finally:
        flight.nursery = None
        try:
            if flight.policy.spill:
                await _spill(flight)
            _finish(flight)
        finally:
            flight.on_close(flight)


async def _spill(flight: Flight) -> None:
    """Hand off the durable tasks that never started (``spill=True``)."""
    if flight.policy.backend is None:  # pragma: no cover - the supervisor checks
        return
    durable = [
        task
        for task in flight.batch.tasks
        if task.state is TaskState.PENDING and task._durable  # pyright: ignore[reportPrivateUsage]
    ]
    if durable:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SPILL_TIMEOUT):
            await hand_off(flight, durable, cut=True)


def _finish(flight: Flight) -> None:
    """Record what is left: tasks never started are skipped."""
    tasks = flight.batch.tasks
    reason: str | None = None
    for index, task in enumerate(tasks):
        if task._recorded:  # pyright: ignore[reportPrivateUsage]
            continue
        if task.state is TaskState.PENDING:
            if reason is None:
                reason = flight.pending_reason()
            task._skip(reason)  # pyright: ignore[reportPrivateUsage]
            flight.end(task, index, cut=True)
        else:
            flight.end(task, index)
    flight.batch._close("its batch has finished")  # pyright: ignore[reportPrivateUsage]


async def hand_off(flight: Flight, tasks: list[BackgroundTask], *, cut: bool = False) -> bool:
    """Hand ``tasks`` to the durable backend; record them. False if it failed."""
    backend = flight.policy.backend
    if backend is None:  # pragma: no cover - callers check
        return False
    try:
        ids = await backend.hand_off(tasks)
        if len(ids) != len(tasks):
            raise RuntimeError(
                f"the durable backend returned {len(ids)} ids for {len(tasks)} tasks"
            )
    except Exception as exc:
        logger.error(
            "could not hand off %d background task(s) of request %s to the durable backend",
            len(tasks),
            flight.request,
            exc_info=exc,
        )
        return False
    index_of = {id(task): i for i, task in enumerate(flight.batch.tasks)}
    for task, engine_id in zip(tasks, ids, strict=True):
        task._hand_off(engine_id)  # pyright: ignore[reportPrivateUsage]
        flight.end(task, index_of[id(task)], cut=cut)
    return True


async def _run_sequence(flight: Flight) -> None:
    tasks = flight.batch.tasks
    observers = flight.observers
    try:
        while flight.next < len(tasks):
            index = flight.next
            task = tasks[index]
            if task._concurrent:  # pyright: ignore[reportPrivateUsage]
                flight.next += 1
                continue
            if task.state is not TaskState.PENDING:
                # Run by hand (await task()), discarded or handed off already.
                flight.next += 1
                flight.end(task, index)
                continue
            if flight.stop_reason is not None:
                flight.next += 1
                task._skip(flight.stop_reason)  # pyright: ignore[reportPrivateUsage]
                flight.end(task, index)
                continue
            if flight.deadline != math.inf and flight.now() >= flight.deadline:
                return  # the rest is skipped (or spilled) by _finish
            flight.next += 1
            if task._durable or observers._items:  # pyright: ignore[reportPrivateUsage]
                await _run_one(flight, task, index)
                continue
            # _run_one's common case, inline: one coroutine less per task.
            try:
                await task._run(limiter=flight.limiter, now=flight.now)  # pyright: ignore[reportPrivateUsage]
            except BaseException as exc:
                await _ended_by(flight, task, index, exc)
            else:
                flight.end(task, index)
    finally:
        flight.sequencing = False


async def _run_concurrent(flight: Flight, task: BackgroundTask, index: int) -> None:
    if task.state is not TaskState.PENDING:
        flight.end(task, index)
        return
    await _run_one(flight, task, index)


async def _run_one(flight: Flight, task: BackgroundTask, index: int) -> None:
    if task._durable:  # pyright: ignore[reportPrivateUsage]
        # Added after the response started (its hand-off came too late for
        # the 503 promise): hand it off now; if that fails it fails.
        if not await hand_off(flight, [task]):
            task.state = TaskState.FAILED
            task.error = RuntimeError("the durable backend could not store the task")
            task._release()  # pyright: ignore[reportPrivateUsage]
            flight.end(task, index)
        return
    observers = flight.observers
    try:
        if observers._items:  # pyright: ignore[reportPrivateUsage]
            with observers.task_running(task):
                await task._run(limiter=flight.limiter, now=flight.now)  # pyright: ignore[reportPrivateUsage]
        else:
            await task._run(limiter=flight.limiter, now=flight.now)  # pyright: ignore[reportPrivateUsage]
    except BaseException as exc:
        await _ended_by(flight, task, index, exc)
    else:
        flight.end(task, index)


async def _ended_by(flight: Flight, task: BackgroundTask, index: int, exc: BaseException) -> None:
    """Record a run that raised ``exc``; re-raise it, or its cancellation part."""
    if task.state is not TaskState.FAILED:
        flight.end(task, index, cut=True)
        try:
            raise exc
        finally:
            # The traceback keeps this frame: without the del, every cut task
            # leaves a reference cycle (exception, traceback, frame, exception)
            # for the collector, which then walks the whole heap to find them.
            del exc
    raw = flight.end(task, index)
    await _failed(flight, task, raw, exc)
    cancelled = _cancellation_part(exc)
    if cancelled is not None:
        raise cancelled from None


def _cancellation_part(exc: BaseException) -> BaseException | None:
    if isinstance(exc, BaseExceptionGroup):
        match, _ = exc.split(trio.Cancelled)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        return match  # pyright: ignore[reportUnknownVariableType]
    return None


async def _failed(
    flight: Flight, task: BackgroundTask, raw: RawRecord | None, exc: BaseException
) -> None:
    error = failure_of(exc) or exc
    logger.error(
        "background task %s (%s) failed, for request %s",
        task.name,
        task.id,
        flight.request,
        exc_info=error,
    )
    policy = flight.policy
    if policy.on_error == "stop":
        flight.stop_reason = f"task {task.id} ({task.name}) failed and on_error='stop'"
    hook = policy.error_hook
    if hook is not None and raw is not None:
        await _call_hook(hook, build_record(raw, flight.epoch), error)


async def _call_hook(hook: ErrorHook, record: TaskRecord, exc: BaseException) -> None:
    try:
        result = hook(record, exc)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("the error hook failed for background task %s", record.id)
