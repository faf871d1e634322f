"""Plain records of what happened to each task, and the shutdown report.

Records are frozen dataclasses with no references to the task, its
arguments or its exception, so keeping thousands of them holds no request
data alive. Times are seconds on trio's clock since the supervisor first ran
in this trio run, so the same scenario under ``trio.testing.MockClock`` gives
the same numbers, and the same JSON, every time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ._tasks import TaskState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._progress import Progress

__all__ = [
    "FINAL_STATES",
    "RawRecord",
    "ShutdownReport",
    "TaskRecord",
    "build_record",
    "format_error",
]

FINAL_STATES: tuple[TaskState, ...] = (
    TaskState.COMPLETED,
    TaskState.FAILED,
    TaskState.CANCELLED,
    TaskState.SKIPPED,
    TaskState.ABANDONED,
    TaskState.HANDED_OFF,
)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What happened to one task.

    Attributes:
        id: ``"<batch>.<index>"``, unique within a supervisor's run; with
            several worker processes ``"<pid>-<batch>.<index>"``, unique
            across them.
        name: The task function's qualified name.
        state: The final :class:`TaskState`.
        error: ``"ExceptionType: message"`` for a failed task, else None.
        reason: Why the task was skipped, cancelled or abandoned, else None.
        request: The request it came from, as ``"METHOD /path"``.
        batch: The batch's number, in the order batches started.
        index: The task's position in its batch.
        started_at: When it started (seconds; None if it never started).
        ended_at: When it reached its final state (seconds); None while a
            live snapshot shows it pending or running.
        progress: The last progress it reported, or None.
        overrun: Seconds it ended after the shutdown deadline (it shielded
            itself, swallowed the cancellation or blocked the event loop), or
            None if it ended in time (or was cut as soon as the event loop got
            to it, however busy the loop was).
        waited: Seconds from its response being complete to its start (the
            wait for a thread included), or None if it never started.
        engine_id: The durable engine's id of a handed-off task, or None.
        attempts: How many times it ran: 1, more with ``retries`` (see
            :func:`~trio_background.task`), 0 if it never started.
        worker: The prefix of the worker process's ids (``"<pid>-"``) when
            the server runs several (``--workers``), else ``""``.
    """

    name: str
    state: TaskState
    error: str | None
    reason: str | None
    request: str
    batch: int
    index: int
    started_at: float | None
    ended_at: float | None
    progress: Progress | None = None
    overrun: float | None = None
    waited: float | None = None
    engine_id: str | None = None
    attempts: int = 0
    worker: str = ""

    @property
    def id(self) -> str:
        return f"{self.worker}{self.batch}.{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data."""
        progress = self.progress
        return {
            "name": self.name,
            "state": self.state.value,
            "error": self.error,
            "reason": self.reason,
            "request": self.request,
            "batch": self.batch,
            "index": self.index,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "progress": None if progress is None else progress._asdict(),
            "id": self.id,
            "overrun": self.overrun,
            "waited": self.waited,
            "engine_id": self.engine_id,
            "attempts": self.attempts,
        }


class RawRecord(NamedTuple):
    """What the runner hands the ledger for each task: cheap to make and to keep,
    turned into a :class:`TaskRecord` only when someone looks. Times are
    absolute, on trio's clock."""

    name: str
    state: TaskState
    error: str | None
    reason: str | None
    request: str
    batch: int
    task_index: int
    started: float | None
    ended: float | None
    progress: Progress | None
    overrun: float | None
    ready: float | None
    engine_id: str | None
    attempts: int = 0


def format_error(exc: BaseException) -> str:
    """``"Type: message"``; an exception whose ``str()`` raises is still described.

    As the traceback module does: ``<exception str() failed>``.
    """
    try:
        text = str(exc)
    except BaseException:
        text = "<exception str() failed>"
    name = type(exc).__qualname__
    return f"{name}: {text}" if text else name


def _since(when: float | None, epoch: float) -> float | None:
    return None if when is None else round(when - epoch, 6)


def build_record(raw: RawRecord, epoch: float, worker: str = "") -> TaskRecord:
    """The :class:`TaskRecord` for ``raw``, with times relative to ``epoch``."""
    started = raw.started
    ready = raw.ready
    return TaskRecord(
        name=raw.name,
        state=raw.state,
        error=raw.error,
        reason=raw.reason,
        request=raw.request,
        batch=raw.batch,
        index=raw.task_index,
        started_at=_since(started, epoch),
        ended_at=_since(raw.ended, epoch),
        progress=raw.progress,
        overrun=None if raw.overrun is None else round(raw.overrun, 6),
        waited=None if started is None or ready is None else round(max(0.0, started - ready), 6),
        engine_id=raw.engine_id,
        attempts=raw.attempts,
        worker=worker,
    )


def _empty_counts() -> dict[str, int]:
    return {state.value: 0 for state in FINAL_STATES}


@dataclass(frozen=True)
class ShutdownReport:
    """What happened to every task of a supervisor's life.

    The counts are exact: ``total == sum(counts.values())`` and every task
    ever added is counted once. The record lists keep every task that
    shutdown cut (cancelled, abandoned, or skipped after shutdown began) and
    the most recent others (see ``Supervisor(keep_records=...)``); a record
    list can therefore be shorter than its count, never longer.

    Attributes:
        mode: ``"drain"`` or ``"cancel"``; None if no shutdown was requested
            (for example the server's own deadline cut the tasks).
        cause: What started the shutdown (``"signal"``, ``"trigger"``,
            ``"lifespan shutdown"``, ...), or None.
        drain_timeout: The drain timeout in force, or None.
        shutdown_started_at: When shutdown began (seconds), or None.
        deadline: The batch deadline (seconds), or None.
        counts: Exact number of tasks per final state (keys are the
            :class:`TaskState` values).
        completed: Records of completed tasks (the most recent).
        failed: Records of failed tasks (the most recent).
        cancelled: Records of cancelled tasks.
        skipped: Records of skipped tasks.
        abandoned: Records of abandoned tasks.
    """

    mode: str | None = None
    cause: str | None = None
    drain_timeout: float | None = None
    shutdown_started_at: float | None = None
    deadline: float | None = None
    counts: Mapping[str, int] = field(default_factory=_empty_counts)
    completed: tuple[TaskRecord, ...] = ()
    failed: tuple[TaskRecord, ...] = ()
    cancelled: tuple[TaskRecord, ...] = ()
    skipped: tuple[TaskRecord, ...] = ()
    abandoned: tuple[TaskRecord, ...] = ()
    handed_off: tuple[TaskRecord, ...] = ()

    @property
    def total(self) -> int:
        """Every task counted, whatever its state."""
        return sum(self.counts.values())

    @property
    def all_completed(self) -> bool:
        """True when every task completed or was handed off (also when there were none)."""
        done = self.counts[TaskState.COMPLETED.value] + self.counts[TaskState.HANDED_OFF.value]
        return done == self.total

    def count(self, state: TaskState | str) -> int:
        """The exact number of tasks that ended in ``state``."""
        return self.counts[TaskState(state).value]

    def records(self, state: TaskState | str) -> tuple[TaskRecord, ...]:
        """The kept records for ``state``."""
        records: tuple[TaskRecord, ...] = getattr(self, TaskState(state).value)
        return records

    @property
    def not_completed(self) -> tuple[TaskRecord, ...]:
        """Kept records of every task that did not complete, in stable order."""
        merged = self.failed + self.cancelled + self.skipped + self.abandoned
        return tuple(sorted(merged, key=lambda r: (r.batch, r.index)))

    def summary(self) -> str:
        """One line for the log: mode, total and each count."""
        # handed_off only when there are some: most apps have no durable backend.
        counts = ", ".join(
            f"{self.counts[s.value]} {s.value}"
            for s in FINAL_STATES
            if s is not TaskState.HANDED_OFF or self.counts[s.value]
        )
        if self.mode is None:
            how = "no shutdown requested" if self.cause is None else self.cause
        elif self.mode == "drain":
            how = f"drain, timeout {self.drain_timeout:g}s"
        else:
            how = "cancel"
        if self.mode is not None and self.cause is not None:
            how += f", on {self.cause}"
        return f"background tasks ({how}): {self.total} total: {counts}"

    def log_line(self, most: int = 20) -> tuple[int, str]:
        """The level and text of the report's log line.

        The summary at INFO when every task completed (or was handed off),
        else at WARNING, naming (up to ``most`` of) those that did not.
        """
        if self.all_completed:
            return logging.INFO, self.summary()
        missed = self.not_completed
        named = ", ".join(f"{r.id} {r.name} ({r.state.value})" for r in missed[:most])
        if len(missed) > most:
            named += f", and {len(missed) - most} more"
        return logging.WARNING, f"{self.summary()}; not completed: {named or '(records not kept)'}"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "cause": self.cause,
            "drain_timeout": self.drain_timeout,
            "shutdown_started_at": self.shutdown_started_at,
            "deadline": self.deadline,
            "total": self.total,
            "counts": dict(self.counts),
        }
        for state in FINAL_STATES:
            data[state.value] = [r.to_dict() for r in self.records(state)]
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON text, stable for the same report."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)
