"""The supervisor: every batch of an app, one shutdown deadline, one report.

There is one supervisor per app (the middleware owns it). It hands each batch
a cancel scope, and shutdown is nothing more than setting one deadline on all
of those scopes, and on the scopes of batches that start later. The runner
turns that cancellation into final states; the supervisor counts the records
and keeps a bounded number of them.

State lives per trio run (a ``RunVar``): an app object built at import time
and used by many ``trio.run`` calls (a test suite) starts each run fresh.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import trio

from ._records import (
    FINAL_STATES,
    RawRecord,
    ShutdownReport,
    TaskRecord,
    build_record,
    raw_record,
)
from ._runner import BatchRun, ErrorHook, OnError, run_batch
from ._tasks import BackgroundTasks, TaskState

__all__ = ["Mode", "Snapshot", "Supervisor", "SupervisorStatistics"]

logger = logging.getLogger("trio_background")

Mode = Literal["drain", "cancel"]

DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_THREAD_LIMIT = 8
DEFAULT_KEEP_RECORDS = 100
_MAX_NAMED_IN_LOG = 20


def check_mode(mode: object) -> Mode:
    if mode == "drain":
        return "drain"
    if mode == "cancel":
        return "cancel"
    raise ValueError(f"mode must be 'drain' or 'cancel', got {mode!r}")


def check_timeout(timeout: object, what: str = "drain_timeout") -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(timeout).__qualname__}")
    if not timeout >= 0 or math.isinf(timeout):
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {timeout!r}")
    return float(timeout)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of the supervisor, from :meth:`Supervisor.statistics`.

    Attributes:
        batches_running: Batches in flight now.
        shutting_down: Whether shutdown has begun.
        deadline: The batch deadline (seconds since the supervisor started),
            or None before shutdown.
        counts: Exact number of tasks per final state so far.
    """

    batches_running: int
    shutting_down: bool
    deadline: float | None
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the supervisor is doing now, from :meth:`Supervisor.snapshot`.

    Attributes:
        shutting_down: Whether shutdown has begun.
        deadline_in: Seconds until the batch deadline, or None before shutdown.
        counts: Exact number of tasks per final state so far.
        active: Live records of the tasks of running batches that have not
            ended (``pending`` or ``running``; ``ended_at`` is None): what a
            shutdown now would cut.
        finished: The kept records of finished tasks.
    """

    shutting_down: bool
    deadline_in: float | None
    counts: dict[str, int]
    active: tuple[TaskRecord, ...]
    finished: tuple[TaskRecord, ...]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready data."""
        return {
            "shutting_down": self.shutting_down,
            "deadline_in": self.deadline_in,
            "counts": dict(self.counts),
            "active": [r.to_dict() for r in self.active],
            "finished": [r.to_dict() for r in self.finished],
        }


class _RunState:
    """Everything that changes, for one trio run."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.epoch = trio.current_time()
        self.limiter = trio.CapacityLimiter(supervisor.thread_limit)
        self.next_batch = 1
        self.in_flight: dict[int, BatchRun] = {}
        # Made only when someone waits for idleness: most requests never do.
        self.idle: trio.Event | None = None
        self.counts_by_state = dict.fromkeys(FINAL_STATES, 0)
        keep = supervisor.keep_records
        self.recent: dict[TaskState, deque[RawRecord]] = {
            state: deque(maxlen=keep) for state in FINAL_STATES
        }
        self.cut: list[RawRecord] = []
        self.mode: Mode | None = None
        self.drain_timeout: float | None = None
        self.shutdown_started_at: float | None = None
        self.deadline = math.inf  # on trio's clock
        self.final: ShutdownReport | None = None

    def emit(self, raw: RawRecord, cut: bool) -> None:
        state = raw[1]
        self.counts_by_state[state] += 1
        if cut or self.shutdown_started_at is not None:
            self.cut.append(raw)
        else:
            self.recent[state].append(raw)

    @property
    def counts(self) -> dict[str, int]:
        return {state.value: n for state, n in self.counts_by_state.items()}

    def kept(self) -> list[RawRecord]:
        """Every kept raw record, in batch order then task order."""
        kept = [raw for records in self.recent.values() for raw in records]
        kept.extend(self.cut)
        kept.sort(key=lambda raw: (raw[5], raw[6]))
        return kept

    def since(self, when: float) -> float:
        return round(when - self.epoch, 6)


class Supervisor:
    """Owns an app's batches: the thread limiter, the policy, the shutdown.

    Args:
        mode: What shutdown does to running batches: ``"drain"`` lets them
            run until ``drain_timeout``, ``"cancel"`` cuts them at once.
        drain_timeout: Seconds a drain may take before the deadline cuts.
        on_error: ``"continue"`` runs the next task after a failure;
            ``"stop"`` skips the rest of that batch.
        error_hook: Called (sync or async) with the :class:`TaskRecord` and the
            exception of each failed task. What it raises is logged.
        thread_limit: How many sync tasks may run in threads at once. The
            limiter is the supervisor's own, so background threads never take
            the tokens that sync endpoints need.
        keep_records: How many of the most recent records to keep per final
            state, besides every record of a task that shutdown cut.

    Raises:
        ValueError: An option is out of range.
        TypeError: An option has the wrong type.
    """

    def __init__(
        self,
        *,
        mode: Mode = "drain",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        on_error: OnError = "continue",
        error_hook: ErrorHook | None = None,
        thread_limit: int = DEFAULT_THREAD_LIMIT,
        keep_records: int = DEFAULT_KEEP_RECORDS,
    ) -> None:
        self.mode: Mode = check_mode(mode)
        self.drain_timeout = check_timeout(drain_timeout)
        if on_error not in ("continue", "stop"):
            raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}")
        self.on_error: OnError = on_error
        if error_hook is not None and not callable(error_hook):
            raise TypeError(
                "error_hook must be a function taking (record, exception), got "
                f"{type(error_hook).__qualname__}"
            )
        self.error_hook = error_hook
        if not _is_count(thread_limit) or thread_limit < 1:
            raise ValueError(f"thread_limit must be an int >= 1, got {thread_limit!r}")
        self.thread_limit = thread_limit
        if not _is_count(keep_records) or keep_records < 0:
            raise ValueError(f"keep_records must be an int >= 0, got {keep_records!r}")
        self.keep_records = keep_records
        self._runs: trio.lowlevel.RunVar[_RunState] = trio.lowlevel.RunVar(
            f"trio_background.Supervisor@{id(self):#x}"
        )

    def __repr__(self) -> str:
        return f"<Supervisor mode={self.mode} drain_timeout={self.drain_timeout:g}>"

    def _state(self) -> _RunState:
        try:
            return self._runs.get()
        except LookupError:
            state = _RunState(self)
            self._runs.set(state)
            return state

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The limiter that sync tasks' threads run under (this trio run's)."""
        return self._state().limiter

    @property
    def shutting_down(self) -> bool:
        """Whether shutdown has begun in this trio run."""
        return self._state().shutdown_started_at is not None

    def start(self) -> None:
        """Mark the start of the supervisor's life in this trio run.

        Times in records count from here. Called at lifespan startup; if it
        never is, the first batch starts the clock.
        """
        self._state()

    async def run(self, batch: BackgroundTasks, *, request: str = "-") -> None:
        """Run ``batch`` now, under this supervisor's policy and deadline.

        Args:
            batch: The batch; it is closed when this returns.
            request: The request it came from, for records and logs.

        Cancellation:
            At the shutdown deadline the batch is cut (see the runner) and
            this returns normally. A cancellation from an enclosing scope (the
            server's own deadline) is recorded the same way and propagates.
        """
        state = self._state()
        number = self._number(batch)
        scope = trio.CancelScope(deadline=state.deadline)
        run = BatchRun(
            number=number,
            request=request,
            batch=batch,
            limiter=state.limiter,
            on_error=self.on_error,
            error_hook=self.error_hook,
            epoch=state.epoch,
            emit=state.emit,
            cancel_scope=scope,
        )
        state.in_flight[number] = run
        try:
            with scope:
                await run_batch(batch, run)
        finally:
            del state.in_flight[number]
            if not state.in_flight and state.idle is not None:
                state.idle.set()
                state.idle = None

    def open_batch(self) -> BackgroundTasks:
        """A new batch, numbered now, so its tasks get ids as they are added."""
        batch = BackgroundTasks()
        self._number(batch)
        return batch

    def _number(self, batch: BackgroundTasks) -> int:
        number = batch.number
        if number is None:
            state = self._state()
            number = state.next_batch
            state.next_batch += 1
            batch.assign_ids(number)
        return number

    def skip(self, batch: BackgroundTasks, *, request: str = "-", reason: str) -> None:
        """Record every task of ``batch`` as ``skipped`` for ``reason``, unrun."""
        state = self._state()
        number = self._number(batch)
        now = trio.current_time()
        for index, task in enumerate(batch.tasks):
            task.skip(reason)
            state.emit(raw_record(task, request, number, index, now), False)
        batch.close(f"it was skipped ({reason})")

    def begin_shutdown(
        self, *, mode: Mode | None = None, drain_timeout: float | None = None
    ) -> None:
        """Set the batch deadline: now (cancel) or now + drain_timeout (drain).

        Batches running now and batches that start later share the deadline.
        Calling again can only bring the deadline closer (a second Ctrl-C
        with ``mode="cancel"`` cuts a drain short).

        Args:
            mode: Overrides the supervisor's mode for this shutdown.
            drain_timeout: Overrides the supervisor's drain timeout.
        """
        mode = self.mode if mode is None else check_mode(mode)
        timeout = self.drain_timeout if drain_timeout is None else check_timeout(drain_timeout)
        state = self._state()
        now = trio.current_time()
        deadline = now if mode == "cancel" else now + timeout
        if state.shutdown_started_at is None:
            state.shutdown_started_at = now
        if deadline >= state.deadline:
            return
        state.deadline = deadline
        state.mode = mode
        state.drain_timeout = timeout if mode == "drain" else None
        for flight in state.in_flight.values():
            flight.cancel_scope.deadline = min(flight.cancel_scope.deadline, deadline)
        logger.info(
            "shutdown: %s (%d batches running; batches that start later share the deadline)",
            "cancelling background tasks now"
            if mode == "cancel"
            else f"draining background tasks for up to {timeout:g}s",
            len(state.in_flight),
        )

    def time_until_deadline(self) -> float:
        """Seconds until the batch deadline: ``inf`` before shutdown, 0 once passed."""
        deadline = self._state().deadline
        return max(0.0, deadline - trio.current_time())

    async def wait_idle(self) -> None:
        """Return once no batch is running (at once if none is)."""
        state = self._state()
        while state.in_flight:
            if state.idle is None:
                state.idle = trio.Event()
            await state.idle.wait()
        await trio.lowlevel.checkpoint()

    async def shutdown(
        self, *, mode: Mode | None = None, drain_timeout: float | None = None
    ) -> ShutdownReport:
        """Begin shutdown, wait until every running batch has ended, report.

        Requests still being handled are not waited for (the server or the
        test client does that): their batches meet the same deadline.

        Returns:
            The final :class:`ShutdownReport` (also logged, see :meth:`close`).
        """
        self.begin_shutdown(mode=mode, drain_timeout=drain_timeout)
        await self.wait_idle()
        return self.close()

    def report(self) -> ShutdownReport:
        """The report as it stands now (counts so far, records kept so far)."""
        state = self._state()
        by_state: dict[TaskState, list[TaskRecord]] = {s: [] for s in FINAL_STATES}
        for raw in state.kept():
            by_state[raw[1]].append(build_record(raw, state.epoch))
        started = state.shutdown_started_at
        return ShutdownReport(
            mode=state.mode,
            drain_timeout=state.drain_timeout,
            shutdown_started_at=None if started is None else state.since(started),
            deadline=None if math.isinf(state.deadline) else state.since(state.deadline),
            counts=dict(state.counts),
            completed=tuple(by_state[TaskState.COMPLETED]),
            failed=tuple(by_state[TaskState.FAILED]),
            cancelled=tuple(by_state[TaskState.CANCELLED]),
            skipped=tuple(by_state[TaskState.SKIPPED]),
            abandoned=tuple(by_state[TaskState.ABANDONED]),
        )

    def close(self) -> ShutdownReport:
        """Make the final report and log it, once; later calls return it again.

        The log is one line: the summary at INFO when every task completed,
        else at WARNING, naming the tasks that did not complete.
        """
        state = self._state()
        if state.final is not None:
            return state.final
        report = state.final = self.report()
        if report.all_completed:
            logger.info("%s", report.summary())
        else:
            missed = report.not_completed
            named = ", ".join(
                f"{r.id} {r.name} ({r.state.value})" for r in missed[:_MAX_NAMED_IN_LOG]
            )
            more = len(missed) - _MAX_NAMED_IN_LOG
            if more > 0:
                named += f", and {more} more"
            logger.warning("%s; not completed: %s", report.summary(), named or "(records not kept)")
        return report

    def _live(self, flight: BatchRun, index: int) -> TaskRecord:
        state = self._state()
        task = flight.batch.tasks[index]
        return TaskRecord(
            name=task.name,
            state=task.state,
            error=None,
            reason=None,
            request=flight.request,
            batch=flight.batch.number or 0,
            index=index,
            started_at=None if task.started_at is None else state.since(task.started_at),
            ended_at=None,
            progress=task.progress,
        )

    def task(self, task_id: str) -> TaskRecord | None:
        """What is known of task ``task_id`` (``"<batch>.<index>"``), or None.

        A task of a running batch that has not ended gets a live record
        (state, progress); a finished one, its kept record; a finished task
        whose record was dropped (see ``keep_records``), None.
        """
        state = self._state()
        batch_text, _, index_text = task_id.partition(".")
        if not (batch_text.isdigit() and index_text.isdigit()):
            return None
        flight = state.in_flight.get(int(batch_text))
        index = int(index_text)
        if flight is not None and index < len(flight.batch.tasks):
            if not flight.batch.tasks[index].state.is_final:
                return self._live(flight, index)
        key = (int(batch_text), index)
        for raw in state.cut:
            if (raw[5], raw[6]) == key:
                return build_record(raw, state.epoch)
        for records in state.recent.values():
            for raw in records:
                if (raw[5], raw[6]) == key:
                    return build_record(raw, state.epoch)
        return None

    def snapshot(self) -> Snapshot:
        """Live records of running batches' unfinished tasks, and the kept finished ones."""
        state = self._state()
        active = [
            self._live(flight, index)
            for flight in state.in_flight.values()
            for index, task in enumerate(flight.batch.tasks)
            if not task.state.is_final
        ]
        active.sort(key=lambda r: (r.batch, r.index))
        finished = [build_record(raw, state.epoch) for raw in state.kept()]
        deadline = state.deadline
        return Snapshot(
            shutting_down=state.shutdown_started_at is not None,
            deadline_in=None if math.isinf(deadline) else max(0.0, deadline - trio.current_time()),
            counts=dict(state.counts),
            active=tuple(active),
            finished=tuple(finished),
        )

    def statistics(self) -> SupervisorStatistics:
        """Counts and in-flight work, cheaply, for monitoring."""
        state = self._state()
        return SupervisorStatistics(
            batches_running=len(state.in_flight),
            shutting_down=state.shutdown_started_at is not None,
            deadline=None if math.isinf(state.deadline) else state.since(state.deadline),
            counts=dict(state.counts),
        )
