"""The worker: streaQ's ``Worker`` on trio for one backend's functions, drained on SIGTERM.

streaQ does the queue work: it reads the stream in a consumer group, runs
each task (sync ones in threads), renews the claim on running tasks, and
gives a task whose worker vanished to another worker after ``idle_timeout``.
On SIGINT/SIGTERM it stops taking tasks and lets the running ones finish
until the drain deadline, then cancels them and puts them back in the queue.

This module adds what the library promises everywhere else: a record of
every task the worker ran and, at exit, a :class:`~trio_background.ShutdownReport`
logged in the library's format. A streaQ middleware sees each run start and
end; a subclass of ``Worker`` notes when the signal came, which is what
tells a task cut by the drain deadline from one that timed out.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import trio
from streaq import Worker
from streaq.types import StreaqRetry

from .._records import FINAL_STATES, ShutdownReport, TaskRecord
from .._supervisor import DEFAULT_DRAIN_TIMEOUT
from .._tasks import TaskState
from ._backend import leaf_error, make_streaq_worker

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from anyio import CancelScope
    from streaq.task import RegisteredMiddleware

    from ._backend import StreaqBackend

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "run_worker"]

logger = logging.getLogger("trio_background.streaq")

_KEEP_RECORDS = 100
# streaQ sets the drain deadline a few microseconds before the recorder
# notes the signal: a task cut at that deadline did not overrun it.
_SLACK = 0.01
_MAX_NAMED_IN_LOG = 10
# After losing Redis: the first wait before connecting again, and the longest.
_RECONNECT_BACKOFF = (0.5, 10.0)


class _Recorder:
    """Counts and records each run of a task in this worker."""

    def __init__(self, backend: StreaqBackend, drain_timeout: float) -> None:
        self._is_async = {d.name: d.is_async for d in backend.functions}
        self._request = f"streaq queue {backend.queue_name}"
        self._drain_timeout = drain_timeout
        self._epoch = trio.current_time()
        self._counts = {state.value: 0 for state in FINAL_STATES}
        self._done: dict[TaskState, deque[TaskRecord]] = {
            TaskState.COMPLETED: deque(maxlen=_KEEP_RECORDS),
            TaskState.FAILED: deque(maxlen=_KEEP_RECORDS),
        }
        self._cut: dict[TaskState, list[TaskRecord]] = {
            TaskState.CANCELLED: [],
            TaskState.ABANDONED: [],
        }
        self._started = 0
        self._shutdown_at: float | None = None
        self._middleware: RegisteredMiddleware | None = None

    def attach(self, worker: Worker[None]) -> None:
        self._middleware = worker.middleware(self._wrap)

    def shutdown_begun(self) -> None:
        self._shutdown_at = trio.current_time()

    @property
    def stopping(self) -> bool:
        """Whether the stop signal came."""
        return self._shutdown_at is not None

    def _wrap(
        self, run: Callable[..., Coroutine[Any, Any, Any]]
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        async def recorded(*args: Any, **kwargs: Any) -> Any:
            middleware = self._middleware
            if middleware is None:  # pragma: no cover - attach() comes first
                raise RuntimeError("the recorder runs only as an attached middleware")
            context = middleware.context
            number = self._started
            self._started += 1
            started = trio.current_time()
            try:
                result = await run(*args, **kwargs)
            except trio.Cancelled:
                self._cancelled(context.fn_name, context.task_id, number, started, context.tries)
                raise
            except StreaqRetry:
                # Not over: streaQ runs it again (the policy's retries), and
                # the run that ends it is recorded with its attempts.
                raise
            except BaseException as exc:
                self._add(
                    context.fn_name,
                    context.task_id,
                    number,
                    started,
                    TaskState.FAILED,
                    error=exc,
                    reason=f"try {context.tries}",
                    attempts=context.tries,
                )
                raise
            self._add(
                context.fn_name,
                context.task_id,
                number,
                started,
                TaskState.COMPLETED,
                attempts=context.tries,
            )
            return result

        return recorded

    def _cancelled(
        self, name: str, task_id: str, number: int, started: float, attempts: int
    ) -> None:
        if self._shutdown_at is None:
            # streaQ's own timeout for the task (or an abort): it fails there.
            self._add(
                name,
                task_id,
                number,
                started,
                TaskState.FAILED,
                attempts=attempts,
                error=TimeoutError("its timeout expired (or it was aborted)"),
            )
        elif self._is_async.get(name, True):
            self._add(
                name,
                task_id,
                number,
                started,
                TaskState.CANCELLED,
                attempts=attempts,
                reason="cut by the drain deadline; streaQ puts it back in the queue "
                "for another worker",
            )
        else:
            self._add(
                name,
                task_id,
                number,
                started,
                TaskState.ABANDONED,
                attempts=attempts,
                reason="its thread was still running at the drain deadline; streaQ "
                "puts it back in the queue for another worker",
            )

    def _add(
        self,
        name: str,
        task_id: str,
        number: int,
        started: float,
        state: TaskState,
        *,
        error: BaseException | None = None,
        reason: str | None = None,
        attempts: int = 1,
    ) -> None:
        ended = trio.current_time()
        shutdown = self._shutdown_at
        overrun = None
        if shutdown is not None and ended > shutdown + self._drain_timeout + _SLACK:
            overrun = round(ended - shutdown - self._drain_timeout, 6)
        text = None
        if error is not None:
            message = str(error)
            text = f"{type(error).__qualname__}: {message}" if message else type(error).__qualname__
        record = TaskRecord(
            name=name,
            state=state,
            error=text,
            reason=reason,
            request=self._request,
            batch=number,
            index=0,
            started_at=round(started - self._epoch, 6),
            ended_at=round(ended - self._epoch, 6),
            overrun=overrun,
            engine_id=task_id,
            attempts=attempts,
        )
        self._counts[state.value] += 1
        if state in self._done:
            self._done[state].append(record)
        else:
            self._cut[state].append(record)

    def report(self) -> ShutdownReport:
        shutdown = self._shutdown_at

        def ordered(records: Any) -> tuple[TaskRecord, ...]:
            return tuple(sorted(records, key=lambda r: r.batch))

        return ShutdownReport(
            mode=None if shutdown is None else "drain",
            cause=None if shutdown is None else "signal",
            drain_timeout=self._drain_timeout,
            shutdown_started_at=None if shutdown is None else round(shutdown - self._epoch, 6),
            deadline=None
            if shutdown is None
            else round(shutdown + self._drain_timeout - self._epoch, 6),
            counts=dict(self._counts),
            completed=ordered(self._done[TaskState.COMPLETED]),
            failed=ordered(self._done[TaskState.FAILED]),
            cancelled=ordered(self._cut[TaskState.CANCELLED]),
            abandoned=ordered(self._cut[TaskState.ABANDONED]),
        )


class _DrainingWorker(Worker[None]):
    """streaQ's worker, telling the recorder when the stop signal came."""

    recorder: _Recorder

    async def signal_handler(self, scope: CancelScope) -> None:
        # streaQ's handler waits for SIGINT/SIGTERM, stops taking tasks and
        # gives every running task the drain deadline (in place of its own
        # timeout); a task cancelled from then on is put back in the queue.
        # It returns with no checkpoint after the signal, so "now" is when
        # the signal came.
        await super().signal_handler(scope)
        self.recorder.shutdown_begun()


def log_report(report: ShutdownReport, worker_id: str) -> None:
    """One line, as the web process logs its report: INFO if all completed, else WARNING."""
    summary = f"streaq worker {worker_id}: {report.summary()}"
    if report.all_completed:
        logger.info("%s", summary)
        return
    missed = report.not_completed
    named = ", ".join(
        f"{r.name} {r.engine_id} ({r.state.value})" for r in missed[:_MAX_NAMED_IN_LOG]
    )
    if len(missed) > _MAX_NAMED_IN_LOG:
        named += f", and {len(missed) - _MAX_NAMED_IN_LOG} more"
    logger.warning("%s; not completed: %s", summary, named or "(records not kept)")


async def run_worker(
    backend: StreaqBackend,
    *,
    concurrency: int | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> ShutdownReport:
    """Run ``backend``'s functions from its queue until SIGINT/SIGTERM; return the report.

    ``task_status.started`` gets the worker's id once it reads the queue.
    On the signal the worker stops taking tasks; running ones have until
    ``drain_timeout`` seconds later (streaQ's grace period), then are
    cancelled (a sync task's thread is abandoned) and streaQ queues them
    again for another worker. Tasks this worker had claimed but not started
    go to other workers after the backend's ``idle_timeout``.

    Error handling:
        If Redis goes away once the worker has started, the worker logs it
        (WARNING), and connects again with a backoff (0.5 s doubling to 10 s)
        until Redis answers or a signal stops it, keeping its report. Tasks
        it was running then are cut, and run again by a worker (this one,
        once back) after ``idle_timeout``. Redis unreachable at the very
        start is an error (raised).
    """
    recorder = _Recorder(backend, drain_timeout)
    backoff = _RECONNECT_BACKOFF[0]
    first = True
    while True:
        worker = cast(
            "_DrainingWorker",
            make_streaq_worker(
                backend,
                concurrency=concurrency,
                drain_timeout=drain_timeout,
                worker_class=_DrainingWorker,
            ),
        )
        worker.recorder = recorder
        recorder.attach(worker)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run_async)
                if first:
                    logger.info(
                        "streaq worker %s ready: queue %r, %d functions, concurrency %d, "
                        "drain timeout %gs",
                        worker.id,
                        backend.queue_name,
                        len(backend.functions),
                        worker.concurrency,
                        drain_timeout,
                    )
                    task_status.started(worker.id)
                    first = False
                else:
                    logger.warning("streaq worker %s: Redis is back, reading the queue", worker.id)
                backoff = _RECONNECT_BACKOFF[0]
        except Exception as exc:
            if first or recorder.stopping:
                raise
            logger.warning(
                "streaq worker %s lost Redis at %s (%s); connecting again in %gs",
                worker.id,
                backend.redis_url,
                leaf_error(exc),
                backoff,
            )
            if await _signalled_within(backoff):
                recorder.shutdown_begun()
                break
            backoff = min(2 * backoff, _RECONNECT_BACKOFF[1])
            continue
        break
    report = recorder.report()
    log_report(report, worker.id)
    return report


async def _signalled_within(seconds: float) -> bool:
    """Wait ``seconds``; True at once if SIGINT/SIGTERM comes first."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        with trio.move_on_after(seconds):
            async for _ in signals:
                return True
    return False
