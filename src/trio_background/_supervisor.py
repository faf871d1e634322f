"""The supervisor: every batch of an app, one shutdown deadline, one report.

There is one supervisor per app (the middleware owns it). It knows each batch
from the moment its request opens it (a :class:`~._runner.Flight` with its own
cancel scope) until its last task is recorded, and shutdown is nothing more
than setting one deadline on all of those scopes, and on the scopes of batches
opened later. The runner turns that cancellation into final states; the
ledger (``_ledger.py``) counts the records and keeps a bounded number.

State lives per trio run (a ``RunVar``): an app object built at import time
and used by many ``trio.run`` calls (a test suite) starts each run fresh.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, ParamSpec

import trio

from ._board import Board
from ._observe import Observers, TaskObserver
from ._policy import is_count
from ._records import ShutdownReport, TaskRecord
from ._runner import ErrorHook, OnError, Policy, Runner
from ._tasks import SOON, BackgroundTask, BackgroundTasks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._backend import DurableBackend

P = ParamSpec("P")

__all__ = ["Mode", "Snapshot", "Supervisor", "SupervisorStatistics", "current_supervisor"]

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


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of the supervisor, from :meth:`Supervisor.statistics`.

    Attributes:
        batches_running: Batches in flight now.
        shutting_down: Whether shutdown has begun.
        deadline: The batch deadline (seconds since the supervisor started),
            or None before shutdown.
        counts: Exact number of tasks per final state so far.
        threads_busy: Sync tasks' threads running now (limiter tokens held).
        tasks_active: Tasks of open batches that have not ended.
    """

    batches_running: int
    shutting_down: bool
    deadline: float | None
    counts: dict[str, int]
    threads_busy: int = 0
    tasks_active: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the supervisor is doing now, from :meth:`Supervisor.snapshot`.

    Attributes:
        shutting_down: Whether shutdown has begun.
        deadline_in: Seconds until the batch deadline, or None before shutdown.
        counts: Exact number of tasks per final state so far.
        active: Live records of the tasks of open batches that have not
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


class _Run:
    """The supervisor's life in one trio run: the board, and how shutdown went."""

    __slots__ = (
        "board",
        "cause",
        "drain_timeout",
        "final",
        "mode",
        "nursery",
        "shutdown_started_at",
        "stop_announced",
    )

    def __init__(self, board: Board) -> None:
        self.board = board
        self.stop_announced = False
        self.nursery: trio.Nursery | None = None
        self.mode: Mode | None = None
        self.cause: str | None = None
        self.drain_timeout: float | None = None
        self.shutdown_started_at: float | None = None
        self.final: ShutdownReport | None = None


class Supervisor:
    """Owns an app's batches: the thread limiter, the policy, the shutdown.

    Args:
        mode: What shutdown does to running batches: ``"drain"`` lets them
            run until ``drain_timeout``, ``"cancel"`` cuts them at once.
        drain_timeout: Seconds a drain may take before the deadline cuts.
        on_error: ``"continue"`` runs the next task after a failure;
            ``"stop"`` skips the rest of that batch's sequence.
        error_hook: Called (sync or async) with the :class:`TaskRecord` and the
            exception of each failed task. What it raises is logged.
        thread_limit: How many sync tasks may run in threads at once. The
            limiter is the supervisor's own, so background threads never take
            the tokens that sync endpoints need.
        keep_records: How many of the most recent records to keep per final
            state, besides every record of a task that shutdown cut.
        backend: A durable backend (see ``trio_background.streaq``): tasks of
            the functions it registered are handed off to it.
        spill: At the drain deadline, hand off the backend's tasks that have
            not started instead of skipping them.
        observers: :class:`TaskObserver` instances (metrics, traces).

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
        backend: DurableBackend | None = None,
        spill: bool = False,
        observers: Iterable[TaskObserver] = (),
    ) -> None:
        self.mode: Mode = check_mode(mode)
        self.drain_timeout = check_timeout(drain_timeout)
        if on_error not in ("continue", "stop"):
            raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}")
        if error_hook is not None and not callable(error_hook):
            raise TypeError(
                "error_hook must be a function taking (record, exception), got "
                f"{type(error_hook).__qualname__}"
            )
        if not is_count(thread_limit, 1):
            raise ValueError(f"thread_limit must be an int >= 1, got {thread_limit!r}")
        self.thread_limit = thread_limit
        if not is_count(keep_records, 0):
            raise ValueError(f"keep_records must be an int >= 0, got {keep_records!r}")
        self.keep_records = keep_records
        if backend is not None:
            missing = [
                name
                for name in ("is_durable", "hand_off", "open", "aclose")
                if not callable(getattr(backend, name, None))
            ]
            if missing:
                raise TypeError(
                    f"backend must be a durable backend such as "
                    f"trio_background.streaq.StreaqBackend; {type(backend).__qualname__} has no "
                    f"{', '.join(missing)}"
                )
        if spill and backend is None:
            raise ValueError("spill=True hands tasks off to a durable backend: pass backend= too")
        self.on_error: OnError = on_error
        self.error_hook = error_hook
        self.backend = backend
        self.spill = bool(spill)
        self._observers = Observers()
        for observer in observers:
            self._observers.add(observer)
        # What the runner reads; made once, since each batch holds it.
        self.policy = Policy(on_error, error_hook, backend, self.spill, self._observers)
        self._runs: trio.lowlevel.RunVar[_Run] = trio.lowlevel.RunVar(
            f"trio_background.Supervisor@{id(self):#x}"
        )

    def __repr__(self) -> str:
        return f"<Supervisor mode={self.mode} drain_timeout={self.drain_timeout:g}>"

    def _state(self) -> _Run:
        try:
            return self._runs.get()
        except LookupError:
            return self._new_life()

    def _new_life(self) -> _Run:
        state = _Run(Board(keep_records=self.keep_records, thread_limit=self.thread_limit))
        self._runs.set(state)
        return state

    @property
    def board(self) -> Board:
        """What this supervisor's batches share in this trio run (for the middleware)."""
        return self._state().board

    def add_observer(self, observer: TaskObserver) -> None:
        """Register ``observer`` (once; adding it again does nothing).

        Raises:
            TypeError: ``observer`` is not a :class:`TaskObserver`.
        """
        self._observers.add(observer)

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The limiter that sync tasks' threads run under (this trio run's)."""
        return self._state().board.limiter

    @property
    def shutting_down(self) -> bool:
        """Whether shutdown has begun in this trio run."""
        return self._state().shutdown_started_at is not None

    @property
    def stopping(self) -> bool:
        """Whether the server was asked to stop (:meth:`announce_stop`) or shutdown began.

        With a shutdown delay the first comes before the second: readiness
        (:func:`~trio_background.health`) fails from the first.
        """
        state = self._state()
        return state.stop_announced or state.shutdown_started_at is not None

    def announce_stop(self) -> None:
        """Say that this supervisor's server will stop (``serve()`` does, at the signal)."""
        self._state().stop_announced = True

    def start(self, nursery: trio.Nursery | None = None) -> None:
        """Mark the start of the supervisor's life in this trio run.

        Times in records count from here. Called at lifespan startup (with
        the nursery app-level tasks run in); if it never is, the first batch
        starts the clock. A supervisor that has closed (its report made)
        starts a new life: an app served twice in one trio run gets two
        reports. From then on :func:`current_supervisor` returns
        this supervisor in this trio run.

        Args:
            nursery: The supervisor's own nursery, for :meth:`start_soon`.
        """
        state = self._state()
        if state.final is not None:
            # Served again in the same trio run (a test serving one app twice):
            # a new life, with its own batches, deadline and report.
            state = self._new_life()
        if nursery is not None:
            state.nursery = nursery
        _CURRENT.set(self)

    def start_soon(
        self, func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Run ``func(*args, **kwargs)`` now as an app-level task.

        For work that belongs to no response: started in lifespan, by a
        websocket, anywhere in the app. It runs at once in the supervisor's
        own nursery (opened around the app's lifespan), under the same
        deadline, policies, error handling and report as every task; its
        request is ``app``.

        Returns:
            The task's :class:`BackgroundTask` handle (or, when the function's
            policy has a ``key`` that a pending or running task holds, that task).

        Raises:
            TypeError: As :meth:`BackgroundTasks.add_task`.
            RuntimeError: The supervisor has no nursery (its app was served
                without lifespan), or it has closed.
        """
        task = BackgroundTask(func, *args, **kwargs)
        task.kind = SOON
        state = self._state()
        nursery = state.nursery
        if nursery is None or state.final is not None:
            why = "has closed" if state.final is not None else "has no nursery"
            raise RuntimeError(
                f"cannot start {task.name} as an app-level task: the supervisor {why}; "
                "app-level tasks run in the nursery the middleware opens around the app's "
                "lifespan: serve the app with lifespan on (serve(), python -m trio_background, "
                "Hypercorn, or the test clients)"
            )
        batch = BackgroundTasks()
        runner = Runner(batch, state.board, self.policy, "app")
        admitted = batch.append(task)
        if admitted is task:
            nursery.start_soon(runner.run)
        return admitted  # or the task its policy's key names

    def cancel(self, task_id: str) -> bool:
        """Cancel the task ``task_id`` (see :meth:`BackgroundTask.cancel`).

        Returns:
            Whether it changed anything (False for an unknown id, another
            worker's, or a task that has ended).
        """
        board = self._state().board
        key = _parse_id(task_id, board.ledger.worker)
        if key is None:
            return False
        runner = board.runners.get(key[0])
        if runner is None or key[1] >= len(runner.batch.tasks):
            return False
        return runner.batch.tasks[key[1]].cancel()

    # -- batches -----------------------------------------------------------

    async def run(self, batch: BackgroundTasks, *, request: str = "-") -> None:
        """Run ``batch`` now, under this supervisor's policy and deadline.

        For batches made outside a request (a request's own batch is run by
        the middleware).

        Args:
            batch: The batch; it is finished when this returns.
            request: The request it came from, for records and logs.

        Raises:
            RuntimeError: ``batch`` already belongs to a runner.

        Cancellation:
            At the shutdown deadline the batch is cut (see the runner) and
            this returns normally. A cancellation from an enclosing scope (the
            server's own deadline) is recorded the same way and propagates.
        """
        await Runner(batch, self.board, self.policy, request).run()

    # -- shutdown ----------------------------------------------------------

    def begin_shutdown(
        self,
        *,
        mode: Mode | None = None,
        drain_timeout: float | None = None,
        cause: str | None = None,
        started_at: float | None = None,
    ) -> None:
        """Set the batch deadline: now (cancel) or now + drain_timeout (drain).

        Batches open now and batches opened later share the deadline.
        Calling again can only bring the deadline closer (a second Ctrl-C
        with ``mode="cancel"`` cuts a drain short).

        Args:
            mode: Overrides the supervisor's mode for this shutdown.
            drain_timeout: Overrides the supervisor's drain timeout.
            cause: What started the shutdown, for the report (``"signal"``...).
            started_at: When shutdown was asked for, on trio's clock, if
                before now (a signal that arrived while a task blocked the
                event loop): the deadline counts from then, and a task that
                held the loop past it is recorded with its overrun.

        Raises:
            ValueError: ``mode`` or ``drain_timeout`` is out of range.
            TypeError: ``drain_timeout`` is not a number.
        """
        mode = self.mode if mode is None else check_mode(mode)
        timeout = self.drain_timeout if drain_timeout is None else check_timeout(drain_timeout)
        state = self._state()
        now = trio.current_time() if started_at is None else min(started_at, trio.current_time())
        deadline = now if mode == "cancel" else now + timeout
        if state.shutdown_started_at is None:
            state.shutdown_started_at = now
            state.cause = cause
        board = state.board
        if deadline >= board.deadline:
            return
        state.mode = mode
        state.drain_timeout = timeout if mode == "drain" else None
        board.cut(deadline)
        late = board.ledger.late(deadline) if deadline < trio.current_time() else []
        for raw in late:
            logger.warning(
                "background task %s (%s.%s) ended %s %.3fs after the shutdown deadline, for "
                "request %s: it blocked the event loop when the signal came",
                raw.name,
                raw.batch,
                raw.task_index,
                raw.state.value,
                raw.overrun,
                raw.request,
            )
        open_now = len(board.runners)
        logger.info(
            "shutdown: %s (%d %s open; batches opened later share the deadline)",
            "cancelling background tasks now"
            if mode == "cancel"
            else f"draining background tasks for up to {timeout:g}s",
            open_now,
            "batch" if open_now == 1 else "batches",
        )
        if self._observers:
            self._observers.shutdown_begun(deadline - now)

    def time_until_deadline(self) -> float:
        """Seconds until the batch deadline: ``inf`` before shutdown, 0 once passed."""
        deadline = self._state().board.deadline
        return max(0.0, deadline - trio.current_time())

    async def wait_idle(self) -> None:
        """Return once no batch is open (at once if none is).

        A batch is open from its request's first task until its last task is
        recorded; this also waits for requests still being handled (through
        the middleware), which may still open one.
        """
        board = self._state().board
        while board.runners or board.requests:
            if board.idle is None:
                board.idle = trio.Event()
            await board.idle.wait()
        await trio.lowlevel.checkpoint()

    async def shutdown(
        self,
        *,
        mode: Mode | None = None,
        drain_timeout: float | None = None,
        cause: str | None = None,
    ) -> ShutdownReport:
        """Begin shutdown, wait until every open batch has ended, report.

        Requests still being handled are not cut here (the server or the test
        client does that); their batches meet the same deadline.

        Returns:
            The final :class:`ShutdownReport` (also logged, see :meth:`close`).
        """
        self.begin_shutdown(mode=mode, drain_timeout=drain_timeout, cause=cause)
        await self.wait_idle()
        return self.close()

    def report(self) -> ShutdownReport:
        """The report as it stands now (counts so far, records kept so far)."""
        state = self._state()
        return state.board.ledger.report(
            mode=state.mode,
            cause=state.cause,
            drain_timeout=state.drain_timeout,
            shutdown_started_at=state.shutdown_started_at,
            deadline=state.board.deadline,
        )

    def close(self, *, cause: str | None = None) -> ShutdownReport:
        """Make the final report and log it, once; later calls return it again.

        Args:
            cause: What ends the supervisor's life, if shutdown was never
                begun (``"lifespan shutdown"``): said in the report.

        The log is one line: the summary at INFO when every task completed
        (or was handed off), else at WARNING, naming those that did not.
        """
        state = self._state()
        if state.final is not None:
            return state.final
        if state.shutdown_started_at is None and state.cause is None:
            state.cause = cause
        report = state.final = self.report()
        # From now on a batch opened late is skipped at once (and counted).
        board = state.board
        board.closed = True
        if board.watch is not None:
            board.unwatch()
        logger.log(*report.log_line(_MAX_NAMED_IN_LOG))
        return report

    # -- queries -----------------------------------------------------------

    def _live(self, runner: Runner, task: BackgroundTask) -> TaskRecord:
        board = self._state().board
        started = task.started_at
        return TaskRecord(
            name=task.name,
            state=task.state,
            error=None,
            reason=None,
            request=runner.request,
            batch=runner.number,
            index=task.index,
            started_at=None if started is None else board.ledger.since(started),
            ended_at=None,
            progress=task.progress,
            attempts=task.attempts,
            worker=board.ledger.worker,
        )

    def task(self, task_id: str) -> TaskRecord | None:
        """What is known of task ``task_id`` (``"<batch>.<index>"``), or None.

        A task of an open batch that has not ended gets a live record
        (state, progress); a finished one, its kept record; a finished task
        whose record was dropped (see ``keep_records``), or an id that is not
        of this form, None.
        """
        board = self._state().board
        key = _parse_id(task_id, board.ledger.worker)
        if key is None:
            return None
        number, index = key
        runner = board.runners.get(number)
        if runner is not None and index < len(runner.batch.tasks):
            task = runner.batch.tasks[index]
            if not task.state.is_final:
                return self._live(runner, task)
        return board.ledger.find(number, index)

    def recent_finished(self, limit: int) -> list[TaskRecord]:
        """The ``limit`` most recent kept records of ended tasks, oldest first.

        Builds only those (the rest of the kept records stay raw).

        Raises:
            ValueError: ``limit`` is not an int >= 0.
        """
        if not is_count(limit, 0):
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        return self._state().board.ledger.recent(limit)

    def active_page(
        self, *, after: str | None = None, limit: int = 100
    ) -> tuple[list[TaskRecord], str | None]:
        """Live records of unfinished tasks, in id order, after task id ``after``.

        Builds at most ``limit`` records; returns them and the cursor for the
        next page (None when this page is the last).

        Raises:
            ValueError: ``after`` is not a task id, or ``limit`` is not >= 1.
        """
        if not is_count(limit, 1):
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        start = (0, -1)
        if after is not None:
            key = _parse_id(after, self._state().board.ledger.worker)
            if key is None:
                raise ValueError(f"after must be a task id such as '12.0', got {after!r}")
            start = key
        page: list[TaskRecord] = []
        for number, runner in self._state().board.runners.items():
            if number < start[0]:
                continue
            for task in runner.batch.tasks:
                if (number, task.index) <= start or task.state.is_final:
                    continue
                if len(page) == limit:
                    last = page[-1]
                    return page, last.id
                page.append(self._live(runner, task))
        return page, None

    def snapshot(self) -> Snapshot:
        """Live records of open batches' unfinished tasks, and the kept finished ones."""
        state = self._state()
        board = state.board
        active = [
            self._live(runner, task)
            for runner in board.runners.values()
            for task in runner.batch.tasks
            if not task.state.is_final
        ]
        deadline = board.deadline
        return Snapshot(
            shutting_down=state.shutdown_started_at is not None,
            deadline_in=None if math.isinf(deadline) else max(0.0, deadline - trio.current_time()),
            counts=board.ledger.counts,
            active=tuple(active),
            finished=tuple(board.ledger.kept()),
        )

    def statistics(self) -> SupervisorStatistics:
        """Counts and in-flight work, cheaply, for monitoring."""
        state = self._state()
        board = state.board
        return SupervisorStatistics(
            batches_running=len(board.runners),
            shutting_down=state.shutdown_started_at is not None,
            deadline=None if math.isinf(board.deadline) else board.ledger.since(board.deadline),
            counts=board.ledger.counts,
            threads_busy=board.limiter.borrowed_tokens,
            tasks_active=sum(len(r.batch.tasks) - r.ended for r in board.runners.values()),
        )


_CURRENT: trio.lowlevel.RunVar[Supervisor] = trio.lowlevel.RunVar("trio_background.supervisor")


def current_supervisor() -> Supervisor:
    """The supervisor of the app served in the running trio run.

    Raises:
        RuntimeError: No app with :class:`BackgroundTasksMiddleware` has
            started (its lifespan) in this trio run, or this is not a trio run.
    """
    try:
        return _CURRENT.get()
    except (LookupError, RuntimeError):
        raise RuntimeError(
            "current_supervisor() found no supervisor: call it in a trio run that serves an "
            "app with BackgroundTasksMiddleware, after its lifespan started (serve(), "
            "python -m trio_background, Hypercorn's trio worker, or open_client)"
        ) from None


def _parse_id(task_id: str, worker: str) -> tuple[int, int] | None:
    """``(batch, index)`` of ``task_id``; None if it is not one of this worker's."""
    if not task_id.startswith(worker):
        return None  # another worker's
    batch_text, _, index_text = task_id[len(worker) :].partition(".")
    # isdecimal() alone admits other scripts' digits ("²" is not, "٣" is): ASCII only,
    # and short, so a hostile id costs nothing.
    if not (0 < len(batch_text) <= 18 and 0 < len(index_text) <= 18):
        return None
    if not (batch_text.isascii() and batch_text.isdigit()):
        return None
    if not (index_text.isascii() and index_text.isdigit()):
        return None
    return int(batch_text), int(index_text)
