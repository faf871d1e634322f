"""The runner: one batch, after its response, one task after another.

The runner is handed a batch and a :class:`BatchRun` (what the supervisor
decided for it: limiter, error policy, where records go). It runs each
pending task in order, turns every task into exactly one :class:`TaskRecord`,
and never lets a task's exception out. Cancellation (a shutdown deadline or
the server's own) is the one thing that leaves: the task that was running
ends ``cancelled`` (``abandoned`` if in a thread), the rest ``skipped``, and
``trio.Cancelled`` goes on up to whoever owns the deadline.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import trio

from ._records import RawRecord, TaskRecord, build_record, raw_record
from ._tasks import BackgroundTask, BackgroundTasks, TaskState

__all__ = ["BatchRun", "ErrorHook", "OnError", "run_batch"]

logger = logging.getLogger("trio_background")

OnError = Literal["continue", "stop"]
ErrorHook = Callable[[TaskRecord, BaseException], "Awaitable[None] | None"]


@dataclass(slots=True)
class BatchRun:
    """How one batch runs; made by the supervisor, read by the runner."""

    number: int
    request: str
    batch: BackgroundTasks
    limiter: trio.CapacityLimiter | None
    on_error: OnError
    error_hook: ErrorHook | None
    epoch: float
    emit: Callable[[RawRecord, bool], None]
    """Receives each task's record, and whether a cancellation cut the task."""
    cancel_scope: trio.CancelScope


def _raw(task: BackgroundTask, run: BatchRun, index: int, ended: float) -> RawRecord:
    return raw_record(task, run.request, run.number, index, ended)


async def run_batch(batch: BackgroundTasks, run: BatchRun) -> None:
    """Run every pending task of ``batch`` in order and record each one.

    Error handling:
        A task that raises is logged on the ``trio_background`` logger with
        its name, the request and the traceback, ends ``failed``, and is
        passed to ``run.error_hook``; then the next task runs, or, with
        ``on_error="stop"``, the rest are skipped. A failing hook is logged.

    Cancellation:
        When ``run.cancel_scope``'s deadline has passed, tasks not started
        end ``skipped``. ``trio.Cancelled`` from any scope is re-raised after
        every task of the batch has been recorded.
    """
    tasks = batch.tasks
    emit = run.emit
    scope = run.cancel_scope
    index = 0
    stop_reason: str | None = None
    # No checkpoint between reading the clock and starting the next task, so
    # the time a task ended is also the time the next one is judged by.
    clock = trio.lowlevel.current_clock()
    now = clock.current_time()
    try:
        while index < len(tasks):
            task = tasks[index]
            if task.state is not TaskState.PENDING:
                # Run by hand (await task()) or discarded before the batch ran.
                emit(_raw(task, run, index, now), False)
                index += 1
                continue
            if stop_reason is not None:
                task.skip(stop_reason)
                emit(_raw(task, run, index, now), False)
                index += 1
                continue
            if now >= scope.deadline:
                break
            try:
                await task.run(limiter=run.limiter)
            except Exception as exc:
                now = clock.current_time()
                raw = _raw(task, run, index, now)
                index += 1
                emit(raw, False)
                record = build_record(raw, run.epoch)
                logger.error(
                    "background task %s (%s) failed, for request %s",
                    task.name,
                    record.id,
                    run.request,
                    exc_info=exc,
                )
                if run.on_error == "stop":
                    stop_reason = f"task {record.id} ({task.name}) failed and on_error='stop'"
                if run.error_hook is not None:
                    await _call_hook(run.error_hook, record, exc)
                    now = clock.current_time()
            except BaseException:
                now = clock.current_time()
                emit(_raw(task, run, index, now), True)
                index += 1
                raise
            else:
                now = clock.current_time()
                emit(_raw(task, run, index, now), False)
                index += 1
    finally:
        # Only a cancellation (or an error that is not a task's) leaves the loop
        # early: whatever is left never started.
        now = clock.current_time()
        if now >= scope.deadline:
            reason = "the shutdown deadline passed before it started"
        else:
            reason = "the batch was cancelled before it started"
        while index < len(tasks):
            task = tasks[index]
            task.skip(reason)
            emit(_raw(task, run, index, now), True)
            index += 1
        batch.close("its batch has finished")


async def _call_hook(hook: ErrorHook, record: TaskRecord, exc: BaseException) -> None:
    try:
        result = hook(record, exc)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("the error hook failed for background task %s", record.id)
