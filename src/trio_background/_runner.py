"""The runner: the one owner of a batch, and the one place a task's fate is decided.

A :class:`Runner` owns one batch from its first task to its last record:
every task of every kind (``add_task``, ``start_soon``, ``add_cleanup``,
added by a handler, by a task, from a thread, or adopted from Starlette's
``background=``) comes in through :meth:`Runner.admit`, starts only through
:meth:`Runner._gate`, and ends only through :meth:`Runner._settle`, which
decides its final state and writes its one record. So the rules "no task
starts after the deadline", "nothing after a stop", "every task counted once"
hold for every kind of task by construction, not by each caller's care.

A request's runner runs in a nursery inside the request's own task (so a
child of the server's connection): the sequence one task after another, the
``start_soon`` tasks beside it, then the cleanups, all under the nursery's
cancel scope, whose deadline is the shutdown deadline. ``await tasks()``
outside a request is a runner too, with no supervisor (:func:`run_now`).

The :class:`Board` is what all runners of one supervisor share in one trio
run: the ledger they write to, the thread limiter, the deadline, and the
set of open runners and requests that the supervisor reads. Data flows one
way: runner -> board -> supervisor; nothing here calls up.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import trio

from ._observe import Observers
from ._progress import current_task
from ._records import RawRecord, TaskRecord, format_error
from ._tasks import CLEANUP, SEQUENCE, SOON, BackgroundTask, BackgroundTasks, TaskState, released
from ._threads import ThreadOutcome, run_in_thread

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._backend import DurableBackend
    from ._board import Board
    from ._observe import TaskObserver
    from ._policy import TaskPolicy

__all__ = [
    "ErrorHook",
    "OnError",
    "Policy",
    "Runner",
    "run_now",
]

logger = logging.getLogger("trio_background")

OnError = Literal["continue", "stop"]
ErrorHook = Callable[[TaskRecord, BaseException], "Awaitable[None] | None"]

# How long a spill (handing off tasks not started at the deadline) may take:
# inside the one second that serve() leaves between the deadline and the cut.
SPILL_TIMEOUT = 0.5

# What an ended task's kwargs become (shared: nobody writes to it).
_NO_KWARGS: dict[str, Any] = {}

# The states of a task that ran: only those can overrun the deadline.
_RAN = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.ABANDONED})

_ABANDONED = "cancelled while its thread was running; the thread was left to finish on its own"
_BY_APP = "cancelled by the app"
_SERVER_STOPPED = "the server had stopped before the task was added"


class Policy:
    """What a batch's app asked for: the options of the middleware its request reached.

    ``observers`` are those of every middleware the request went through.
    """

    __slots__ = ("backend", "error_hook", "observers", "on_error", "spill")

    def __init__(
        self,
        on_error: OnError | Literal["raise"],
        error_hook: ErrorHook | None,
        backend: DurableBackend | None,
        spill: bool,
        observers: Observers,
    ) -> None:
        self.on_error: OnError | Literal["raise"] = on_error
        self.error_hook = error_hook
        self.backend = backend
        self.spill = spill
        self.observers = observers

    def plus(self, observer: TaskObserver) -> Policy:
        """This policy with one more observer."""
        return self._with(self.observers.items, (observer,))

    def within(self, outer: Policy) -> Policy:
        """This policy for a request that went through ``outer``'s middleware first."""
        return self._with(outer.observers.items, self.observers.items)

    def _with(self, *groups: Iterable[TaskObserver]) -> Policy:
        observers = Observers()
        for group in groups:
            for observer in group:
                observers.add(observer)
        return Policy(self.on_error, self.error_hook, self.backend, self.spill, observers)


# await tasks() outside a request: the first failure stops the batch and is re-raised.
_STANDALONE = Policy("raise", None, None, False, Observers())


class _Phase(enum.Enum):
    OPEN = "open"  # collecting tasks: the response is not over yet
    RUNNING = "running"  # its nursery is open: admitted tasks start
    ENDED = "ended"  # nothing can start any more: admissions are refused


def _split(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """``exc`` as (its cancellation part, the task's own failure)."""
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return None, exc


class Runner:
    """The one owner of one batch: admits, starts, settles and records its tasks.

    Args:
        batch: The batch; it hands every task added from now on to this runner.
        board: The supervisor's board, or None for ``await tasks()`` outside a request.
        policy: What to do on failure, the observers, the durable backend.
        request: The request it came from, for records and logs.
    """

    __slots__ = (
        "batch",
        "board",
        "cursors",
        "cut_by_app",
        "ended",
        "failure",
        "hold",
        "now",
        "number",
        "nursery",
        "phase",
        "policy",
        "ready_at",
        "request",
        "running",
        "seq_cut",
        "seq_scope",
        "skip_reason",
        "soon_active",
        "soon_idle",
        "stop_reason",
        "thread",
        "waiters",
        "working",
    )

    def __init__(
        self,
        batch: BackgroundTasks,
        board: Board | None,
        policy: Policy,
        request: str,
    ) -> None:
        self.batch = batch
        self.board = board
        self.policy = policy
        self.request = request
        self.number = 0  # 0 until the board knows the batch (its first task)
        self.phase = _Phase.OPEN
        # trio.current_time() without its wrappers: read several times per task.
        self.now = trio.lowlevel.current_clock().current_time
        # The trio thread: admissions from any other hop to it first.
        self.thread = threading.get_ident() if board is None else board.thread
        self.nursery: trio.Nursery | None = None
        self.cursors = [0, 0, 0]  # by kind: where _next looks from
        self.working = False
        self.soon_active = 0
        self.soon_idle: trio.Event | None = None
        self.ended = 0
        self.ready_at: float | None = None
        self.stop_reason: str | None = None
        self.skip_reason: str | None = None
        self.failure: BaseException | None = None
        # Set for a websocket's batch: its sequence waits until the connection closed.
        self.hold: trio.Event | None = None
        self.running: dict[BackgroundTask, trio.CancelScope] = {}
        self.seq_scope: trio.CancelScope | None = None
        self.seq_cut = False
        # Running tasks whose handle's cancel() cut their scope.
        self.cut_by_app: set[BackgroundTask] = set()
        self.waiters: dict[BackgroundTask, trio.Event] | None = None
        batch.bind(self)
        if batch.tasks:
            tasks = list(batch.tasks)
            batch.tasks.clear()
            for task in tasks:
                batch.append(task)  # bound to this runner, as any task added later

    # -- admission: every task comes in here ---------------------------------

    def admit(self, task: BackgroundTask) -> BackgroundTask:
        """Take ``task`` into the batch: from trio or from any thread, atomically.

        Returns:
            ``task``; or, when its policy's key names a task still pending or
            running in this process, that task (``task`` is then dropped).

        Raises:
            RuntimeError: The batch has ended: nothing would run the task.
            TypeError: The policy's key function returned no string.
        """
        if threading.get_ident() != self.thread:
            return self._admit_from_thread(task)
        if self.phase is _Phase.ENDED:
            if inspect.iscoroutine(task.func):  # pragma: no cover - refused at creation
                task.func.close()
            why = "it has already run" if self.board is None else "its batch has finished"
            raise RuntimeError(
                f"cannot add {task.name} to this batch: {why}, so the task would never run; "
                "add tasks while the request is being handled, or from a task of the batch "
                "while it runs"
            )
        policy = task.policy
        if policy is not None and policy.key is not None:
            key = policy.key_of(task.args, task.kwargs)
            keys = _per_run().keys
            holder = keys.get(key)  # type: ignore[arg-type]  # a key is a str
            if holder is not None and not holder.state.is_final:
                return holder
            keys[key] = task  # type: ignore[index]
            task.dedup_key = key
        board = self.board
        tasks = self.batch.tasks
        if board is not None and self.number == 0:
            # The board knows the batch from its first task on.
            self.number = board.next_batch
            board.next_batch += 1
            board.runners[self.number] = self
        if board is not None:
            task.id = f"{board.ledger.worker}{self.number}.{len(tasks)}"
        task.index = len(tasks)
        tasks.append(task)
        backend = self.policy.backend
        if backend is not None and backend.is_durable(task.func):
            task.durable = True
        observers = self.policy.observers
        if observers.items:
            observers.task_added(task)
        if board is not None and board.closed:
            self._skip(task, _SERVER_STOPPED)
            self._end_if_idle()
        elif self.phase is _Phase.RUNNING:
            self._start(task)
        return task

    def _admit_from_thread(self, task: BackgroundTask) -> BackgroundTask:
        token = None if self.board is None else self.board.token
        try:
            return trio.from_thread.run_sync(self.admit, task, trio_token=token)
        except trio.RunFinishedError:
            raise RuntimeError(
                f"cannot add {task.name} to this batch: the server has stopped, so the task "
                "would never run"
            ) from None

    def _start(self, task: BackgroundTask) -> None:
        nursery = self.nursery
        assert nursery is not None  # RUNNING means the nursery is open
        if task.kind == SOON:
            self.soon_active += 1
            nursery.start_soon(self._run_soon, task)
        elif not self.working:
            self.working = True
            nursery.start_soon(self._work)

    # -- the gate: every task starts here ------------------------------------

    def _gate(self, task: BackgroundTask) -> bool:
        """Start ``task`` if it may start now; else settle it ``skipped``."""
        if task.state is not TaskState.PENDING:
            return False  # cancelled by the app while pending: settled already
        board = self.board
        reason: str | None = None
        now = self.now()
        if board is not None and now >= board.deadline:
            reason = "the shutdown deadline passed before it started"
        elif task.kind != CLEANUP:
            reason = self.skip_reason or self.stop_reason
        if reason is not None:
            self._skip(task, reason)
            return False
        task.state = TaskState.RUNNING
        task.started_at = now
        return True

    # -- running -------------------------------------------------------------

    async def run(self) -> None:
        """Run the batch: the sequence, ``start_soon`` tasks beside it, then cleanups.

        Error handling:
            A task that raises anything but a cancellation is logged on the
            ``trio_background`` logger with its name, the request and the
            traceback, ends ``failed``, and is passed to the error hook; then
            the next task runs, or, with ``on_error="stop"``, no other task of
            the batch starts (cleanups run). A failing hook is logged.

        Cancellation:
            At the shutdown deadline the running tasks are cut and the rest end
            ``skipped`` (or are handed off, with ``spill``). ``trio.Cancelled``
            from an enclosing scope is re-raised after every task of the batch
            has been recorded.
        """
        if self.phase is not _Phase.OPEN:
            return  # it ran already (from FastAPI's exit stack, say): once is all
        self.ready_at = trio.current_time()
        board = self.board
        try:
            async with trio.open_nursery() as nursery:
                if board is not None and board.deadline != math.inf:
                    if board.deadline <= self.ready_at:
                        nursery.cancel_scope.cancel()
                    else:
                        nursery.cancel_scope.deadline = board.deadline
                self.nursery = nursery
                if board is not None:
                    board.scopes.add(nursery.cancel_scope)
                self.phase = _Phase.RUNNING
                self.working = True
                for task in self.batch.tasks:
                    if task.kind == SOON and task.state is TaskState.PENDING:
                        self.soon_active += 1
                        nursery.start_soon(self._run_soon, task)
                try:
                    if self.hold is not None:
                        await self.hold.wait()
                    await self._work()
                except trio.Cancelled:
                    if not nursery.cancel_scope.cancel_called:
                        raise
                    # The batch's own deadline: absorbed here rather than by the
                    # nursery's scope, so trio records no exception group per batch.
        finally:
            if board is not None and self.nursery is not None:
                board.scopes.discard(self.nursery.cancel_scope)
            self.nursery = None
            self.phase = _Phase.ENDED
            try:
                if self.policy.spill:
                    await self._spill()
                self._finish()
            finally:
                if board is not None and self.number:
                    board.unregister(self.number)
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    async def _work(self) -> None:
        """Run the sequence, then (once the ``start_soon`` tasks ended) the cleanups.

        The sequence runs in a cancel scope of its own, which the handle's
        ``cancel()`` of the running task cuts (one scope for the whole
        sequence, not one per task: a scope's entry and exit cost more than
        the rest of a task's dispatch). After such a cut, a new scope.
        """
        try:
            while True:
                done = False
                with trio.CancelScope() as scope:
                    self.seq_scope = scope
                    done = await self._sequence(scope)
                if done:
                    return
        finally:
            self.seq_scope = None
            self.working = False
            self._end_if_idle()

    async def _sequence(self, scope: trio.CancelScope) -> bool:
        """Run tasks in order until none is left (True) or ``scope`` was cut (False)."""
        while True:
            task = self._next(SEQUENCE)
            if task is None:
                task = self._next(CLEANUP, peek=True)
                if task is None:
                    return True
                if self.soon_active:
                    if self.soon_idle is None:
                        self.soon_idle = trio.Event()
                    await self.soon_idle.wait()
                    continue
                self.cursors[CLEANUP] += 1
            await self._run(task, scope)
            if self.seq_cut:
                self.seq_cut = False
                return False  # the app cut that task, which swallowed it: a new scope

    def _next(self, kind: int, *, peek: bool = False) -> BackgroundTask | None:
        tasks = self.batch.tasks
        cursor = self.cursors[kind]
        while cursor < len(tasks):
            task = tasks[cursor]
            if task.kind == kind and task.state is TaskState.PENDING:
                self.cursors[kind] = cursor if peek else cursor + 1
                return task
            cursor += 1
        self.cursors[kind] = cursor
        return None

    async def _run_soon(self, task: BackgroundTask) -> None:
        try:
            with trio.CancelScope() as scope:  # the handle's cancel() cuts this task
                await self._run(task, scope)
        finally:
            self.soon_active -= 1
            if not self.soon_active and self.soon_idle is not None:
                self.soon_idle.set()
                self.soon_idle = None
            self._end_if_idle()

    def _end_if_idle(self) -> None:
        # Nothing left that could start a task: refuse admissions from now on,
        # atomically, before the nursery closes (so no trio error can leak).
        if self.phase is _Phase.RUNNING and not self.working and not self.soon_active:
            self.phase = _Phase.ENDED

    async def _run(self, task: BackgroundTask, scope: trio.CancelScope) -> None:
        """Run one task through the gate and settle it; re-raise only a cancellation.

        ``scope``: the cancel scope the task runs in, which its handle's
        ``cancel()`` cuts.
        """
        policy = task.policy
        slot: trio.CapacityLimiter | None = None
        if policy is not None and policy.limit is not None:
            slot = _per_run().limiter(policy)
            if not await self._take_slot(task, slot):
                return
        try:
            if not self._gate(task):
                return
            if task.durable:
                await self._hand_off_late(task)
                return
            observers = self.policy.observers
            # _attempts' common case (async, no policy, no observer) runs inline
            # below: one coroutine and one object less per task (a third of
            # its dispatch cost, bench.dispatch).
            inline = policy is None and task.is_async and not observers.items
            attempt = None if inline else _Attempt(task)
            result: object = None
            exc: BaseException | None = None
            token = current_task.set(task)
            self.running[task] = scope
            try:
                if attempt is None:
                    task.attempts = 1
                    call: Callable[..., Awaitable[object]] = task.func  # type: ignore[assignment]
                    result = await call(*task.args, **task.kwargs)
                elif observers.items:
                    with observers.task_running(task):
                        result = await self._attempts(attempt)
                else:
                    result = await self._attempts(attempt)
            except BaseException as raised:
                exc = raised
            finally:
                current_task.reset(token)
                del self.running[task]
            by_app = bool(self.cut_by_app) and task in self.cut_by_app
            if by_app:
                self.cut_by_app.discard(task)
            try:
                outcome = None if attempt is None else attempt.outcome
                failure, cancelled, raw = self._settle(task, result, exc, outcome, by_app=by_app)
                if failure is not None:
                    await self._failed(task, raw, failure)
                if cancelled is not None:
                    raise cancelled
            finally:
                # The traceback keeps this frame: without the del, every cut task
                # leaves a reference cycle for the collector.
                del exc
        finally:
            if slot is not None:
                slot.release_on_behalf_of(task)

    async def _take_slot(self, task: BackgroundTask, slot: trio.CapacityLimiter) -> bool:
        """Wait for a slot of the task's ``limit``; False (the task settled) if cut first."""
        try:
            slot.acquire_on_behalf_of_nowait(task)  # no wait below the limit
        except trio.WouldBlock:
            try:
                await slot.acquire_on_behalf_of(task)
            except trio.Cancelled:
                if task.state is TaskState.PENDING:
                    self._skip(task, self._pending_reason())
                raise
        if task.state is not TaskState.PENDING:  # cancelled by the app while it waited
            slot.release_on_behalf_of(task)
            return False
        return True

    async def _attempts(self, attempt: _Attempt) -> object:
        """Run the task's function, as often as its policy allows; return what it returned."""
        task = attempt.task
        policy = task.policy
        if policy is None:
            task.attempts = 1
            return await self._call(task, attempt.fresh())
        while True:
            task.attempts += 1
            try:
                if policy.timeout is None:
                    return await self._call(task, attempt.fresh())
                with trio.move_on_after(policy.timeout):
                    return await self._call(task, attempt.fresh())
                raise TimeoutError(f"timed out after {policy.timeout:g} s")
            except policy.retry_on as failure:
                if task.attempts > policy.retries:
                    raise
                delay = policy.delay(task.attempts + 1)
                board = self.board
                if board is not None and trio.current_time() + delay >= board.deadline:
                    task.reason = (
                        f"no retry was allowed: attempt {task.attempts + 1} would start after "
                        "the shutdown deadline"
                    )
                    raise
                logger.warning(
                    "background task %s (%s) failed on attempt %d of %d, for request %s; "
                    "retrying in %gs: %s",
                    task.name,
                    task.id,
                    task.attempts,
                    policy.retries + 1,
                    self.request,
                    delay,
                    format_error(failure),
                )
                try:
                    await trio.sleep(delay)
                except trio.Cancelled:
                    task.error = failure  # it ends with its last failure
                    task.reason = (
                        "no retry was allowed: the batch was cut before attempt "
                        f"{task.attempts + 1}"
                    )
                    raise

    async def _call(self, task: BackgroundTask, outcome: ThreadOutcome | None) -> object:
        if outcome is None:
            return await task.func(*task.args, **task.kwargs)  # type: ignore[misc]  # is_async says so
        limiter = None if self.board is None else self.board.limiter
        return await run_in_thread(
            task.func, task.args, task.kwargs, name=task.name, limiter=limiter, outcome=outcome
        )

    # -- settling: every task ends here --------------------------------------

    def _settle(
        self,
        task: BackgroundTask,
        result: object,
        exc: BaseException | None,
        outcome: ThreadOutcome | None,
        *,
        by_app: bool,
    ) -> tuple[BaseException | None, BaseException | None, RawRecord | None]:
        """Decide ``task``'s final state from how its run ended and record it.

        Returns the task's failure (to log and pass to the hook), the
        cancellation to re-raise, if any, and the record.

        ``by_app``: the task's own scope caught a cancellation (the handle's
        ``cancel()``). A thread that never started ends ``skipped``, one that
        did ``abandoned``; an async task cut ends ``cancelled``. A failure
        (anything but a cancellation, ``SystemExit`` included) ends ``failed``;
        of an exception group, the cancellation part is re-raised and the rest
        is the failure.
        """
        cancelled: BaseException | None = None
        failure: BaseException | None = None
        if outcome is not None and outcome.started_at is not None:
            task.started_at = outcome.started_at
        if exc is not None:
            cancelled, failure = _split(exc)
        if failure is None and task.error is not None:
            failure = task.error  # cut while waiting to retry: its last failure stands
        if failure is not None:
            task.state = TaskState.FAILED
            task.error = failure
        elif cancelled is None and not by_app:
            task.state = TaskState.COMPLETED
            task.value = result
        elif outcome is not None and outcome.started_at is None:
            task.state = TaskState.SKIPPED
            task.started_at = None
            task.reason = _BY_APP if by_app else "cancelled before its thread started"
        elif outcome is not None:
            task.state = TaskState.ABANDONED
            task.reason = f"{_BY_APP}; its thread was left to finish" if by_app else _ABANDONED
        else:
            task.state = TaskState.CANCELLED
            task.reason = _BY_APP if by_app else "cancelled while running"
        return failure, cancelled, self._record(task)

    def _skip(self, task: BackgroundTask, reason: str) -> None:
        task.state = TaskState.SKIPPED
        task.reason = reason
        self._record(task)

    def _record(self, task: BackgroundTask) -> RawRecord | None:
        """Write ``task``'s one record (it is in its final state) and let go of its call."""
        task.func, task.args, task.kwargs = released, (), _NO_KWARGS
        if task.dedup_key is not None:
            keys = _per_run().keys
            if keys.get(task.dedup_key) is task:
                del keys[task.dedup_key]
        self.ended += 1
        waiters = self.waiters
        if waiters is not None:
            event = waiters.pop(task, None)
            if event is not None:
                event.set()
        board = self.board
        if board is None:
            return None
        ended = board.now()
        state = task.state
        overrun: float | None = None
        watch = board.watch
        if (
            watch is not None
            and state in _RAN
            and ended > board.deadline
            and task.started_at is not None
            # One that returned did not let the cut end it (it swallowed it).
            and (state is TaskState.COMPLETED or watch.held_off())
        ):
            overrun = ended - board.deadline
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
                state.value,
                overrun,
                self.request,
            )
        error = task.error
        raw = RawRecord(
            task.name,
            state,
            None if error is None else format_error(error),
            task.reason,
            self.request,
            self.number,
            task.index,
            None
            if state is TaskState.SKIPPED or state is TaskState.HANDED_OFF
            else task.started_at,
            ended,
            task.progress,
            overrun,
            self.ready_at,
            task.engine_id,
            task.attempts,
        )
        cut = overrun is not None or (
            board.deadline != math.inf and state not in (TaskState.COMPLETED, TaskState.FAILED)
        )
        board.ledger.write(raw, cut)
        observers = self.policy.observers
        if observers.items:
            observers.task_ended(task, board.ledger.record(raw))
        return raw

    async def _failed(
        self, task: BackgroundTask, raw: RawRecord | None, error: BaseException
    ) -> None:
        policy = self.policy
        if policy.on_error == "raise":
            self.stop_reason = "an earlier task of the batch raised"
            if self.failure is None:
                self.failure = error
            return
        logger.error(
            "background task %s (%s) failed, for request %s",
            task.name,
            task.id,
            self.request,
            exc_info=error,
        )
        if policy.on_error == "stop" and self.stop_reason is None:
            self.stop_reason = f"task {task.id} ({task.name}) failed and on_error='stop'"
        hook = policy.error_hook
        if hook is not None and raw is not None and self.board is not None:
            await _call_hook(hook, self.board.ledger.record(raw), error)

    def _pending_reason(self) -> str:
        board = self.board
        if board is not None and trio.current_time() >= board.deadline:
            return "the shutdown deadline passed before it started"
        return self.skip_reason or self.stop_reason or "the batch was cancelled before it started"

    def _finish(self) -> None:
        """Settle what never started: ``skipped``, with why."""
        reason = self._pending_reason()
        for task in self.batch.tasks:
            if task.state is TaskState.PENDING:
                self._skip(task, reason)

    # -- what the request, the supervisor and the handles ask ------------------

    @property
    def is_open(self) -> bool:
        """Whether the batch has not started running (it still takes adopted tasks)."""
        return self.phase is _Phase.OPEN

    def hold_sequence(self) -> None:
        """Run only ``start_soon`` tasks until :meth:`release` (a websocket's batch)."""
        self.hold = trio.Event()

    def release(self) -> None:
        """The connection has closed: the sequence and the cleanups may run."""
        if self.hold is not None:
            self.hold.set()

    def app_failed(self, reason: str) -> None:
        """The app raised before its response was over: only cleanups will run.

        The first reason stands (a framework's hook sees the handler raise
        before the middleware sees the app call raise).
        """
        if self.skip_reason is None:
            self.skip_reason = reason

    def cancel(self, task: BackgroundTask) -> bool:
        """The handle's ``cancel()``: skip it if pending, cut it if running."""
        if threading.get_ident() != self.thread:
            token = None if self.board is None else self.board.token
            return trio.from_thread.run_sync(self.cancel, task, trio_token=token)
        if task.state is TaskState.PENDING:
            self._skip(task, _BY_APP)
            return True
        scope = self.running.get(task)
        if scope is None or scope.cancel_called:
            return False
        self.cut_by_app.add(task)
        if scope is self.seq_scope:
            self.seq_cut = True
        scope.cancel()
        return True

    async def wait(self, task: BackgroundTask) -> None:
        if not task.state.is_final:
            if self.waiters is None:
                self.waiters = {}
            event = self.waiters.get(task)
            if event is None:
                event = self.waiters[task] = trio.Event()
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()

    def durable_pending(self) -> list[BackgroundTask]:
        return [t for t in self.batch.tasks if t.durable and t.state is TaskState.PENDING]

    async def hand_off(self, tasks: list[BackgroundTask]) -> bool:
        """Hand ``tasks`` to the durable backend and record them; False if it failed."""
        backend = self.policy.backend
        if backend is None or not tasks:
            return True
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
                self.request,
                exc_info=exc,
            )
            return False
        for task, engine_id in zip(tasks, ids, strict=True):
            if task.state is TaskState.PENDING:
                task.state = TaskState.HANDED_OFF
                task.engine_id = engine_id
                self._record(task)
        return True

    async def _hand_off_late(self, task: BackgroundTask) -> None:
        # Added after the response started (too late for the 503 promise):
        # hand it off now; if that fails the task fails.
        task.state = TaskState.PENDING
        task.started_at = None
        if not await self.hand_off([task]):
            task.state = TaskState.FAILED
            task.error = RuntimeError("the durable backend could not store the task")
            self._record(task)

    async def _spill(self) -> None:
        """Hand off the durable tasks that never started (``spill=True``)."""
        durable = self.durable_pending()
        if durable:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + SPILL_TIMEOUT):
                await self.hand_off(durable)


class _Attempt:
    """One task's runs: the thread outcome of the latest (sync tasks)."""

    __slots__ = ("outcome", "task")

    def __init__(self, task: BackgroundTask) -> None:
        self.task = task
        self.outcome: ThreadOutcome | None = None

    def fresh(self) -> ThreadOutcome | None:
        if not self.task.is_async:
            self.outcome = ThreadOutcome()
        return self.outcome


class _PerRun:
    """What task policies share across every batch of the process's trio run."""

    __slots__ = ("keys", "limiters")

    def __init__(self) -> None:
        self.keys: dict[str, BackgroundTask] = {}
        self.limiters: dict[TaskPolicy, trio.CapacityLimiter] = {}

    def limiter(self, policy: TaskPolicy) -> trio.CapacityLimiter:
        limiter = self.limiters.get(policy)
        if limiter is None:
            assert policy.limit is not None
            limiter = self.limiters[policy] = trio.CapacityLimiter(policy.limit)
        return limiter


_PER_RUN: trio.lowlevel.RunVar[_PerRun] = trio.lowlevel.RunVar("trio_background.policies")


def _per_run() -> _PerRun:
    try:
        return _PER_RUN.get()
    except LookupError:
        state = _PerRun()
        _PER_RUN.set(state)
        return state


async def run_now(batch: BackgroundTasks) -> None:
    """``await tasks()`` outside a request: the same runner, no supervisor.

    Raises:
        BaseException: The first exception a task raised; the tasks after it
            end ``skipped`` (cleanups run).
    """
    await Runner(batch, None, _STANDALONE, "-").run()


async def _call_hook(hook: ErrorHook, record: TaskRecord, exc: BaseException) -> None:
    try:
        result = hook(record, exc)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("the error hook failed for background task %s", record.id)
