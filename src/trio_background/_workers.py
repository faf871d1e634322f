"""``--workers N``: N trio worker processes on shared sockets, one deadline, one report.

The parent binds the sockets (Hypercorn's ``Config.create_sockets``) and
starts each worker as Hypercorn does (multiprocessing's ``spawn``), handing
it the sockets and one end of a pipe. Workers ignore SIGINT and SIGTERM:
the parent alone decides. Over the pipe a worker says when it is ready
(with its shutdown policy) and, every second, its statistics, so when one
dies the parent can say what it was running; the parent sends it
``shutdown`` at the first signal and ``escalate`` at the next. Each worker
writes its own report to a file the parent named, and the parent merges
them: per-worker sections and summed counts.

A worker that dies while serving is logged and replaced; one that dies
before it was ready means the app cannot start, and the whole server stops
(exit 1).

``--reload`` (development) runs through the same parent, which then also
watches the source files (Hypercorn's ``files_to_watch``: every module's
file, in the parent and in each ready worker). On a change it starts a new
generation of workers at once, on the same sockets, so connections are
never refused; each old worker is retired once its successor said it is
ready: it stops accepting and shuts down as at the first signal (its
running tasks get the drain deadline, cancel mode cuts them), logs and
writes its report and exits. A new worker that exits before it was ready
(a syntax error, a failed import, a factory or lifespan that raises) stops
nothing: the old one keeps serving until the next change.

After the first signal, a worker still running ``KILL_AFTER`` seconds
after the batch deadline is killed and reported so (the whole process tree
then exits by the deadline + 1 s); so is a retired worker past its own.
Workers cut in-flight request handlers ``WORKER_CLEANUP_MARGIN`` after the
deadline, before that.

The merged report never passes a missing worker off as an idle one: a
worker that died, was killed or left no report makes the parent exit 1, and
the report's ``lost`` lists each such worker with the reason and what it
last said it had in flight (``tasks_active``, and the first
``LOST_SAMPLE`` of those tasks' records); ``lost_tasks`` sums them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.utils import files_to_watch

from ._board import WORKER
from ._cli import leave
from ._loading import LoadError, check_asgi, load_object
from ._records import FINAL_STATES, ShutdownReport
from ._serve import (
    ShutdownControl,
    serve_middleware,
    signal_arrivals,
    trio_time_of,
    unhook_signal_wakeup,
    wrap,
)
from ._supervisor import DEFAULT_DRAIN_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from hypercorn.config import Config, Sockets

    from ._middleware import BackgroundTasksMiddleware
    from ._supervisor import Mode

__all__ = ["WorkerSpec", "run_workers", "worker_main"]

logger = logging.getLogger("trio_background")

# Seconds after the batch deadline: a worker cuts in-flight request handlers,
# then the parent kills what still runs, leaving itself the rest of the second
# to merge, write the report and exit.
WORKER_CLEANUP_MARGIN = 0.5
KILL_AFTER = 0.8
# How often --reload looks at the source files' modification times.
RELOAD_INTERVAL = 1.0
# How many changed files the reload's log line names.
RELOAD_NAMED = 3
# How often a worker tells the parent what it has in flight, and how many of
# its unfinished tasks' records it sends (what `lost` lists if it dies).
STATS_INTERVAL = 0.25
LOST_SAMPLE = 50
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs, pickled to it."""

    app: str
    factory: bool
    backend: str | None
    mode: Mode | None
    drain_timeout: float | None
    shutdown_delay: float
    freeze_gc: bool
    log_level: str
    configure_logging: Callable[[Config, str], None]
    config: Config
    sockets: Sockets
    reload: bool = False


def worker_main(spec: WorkerSpec, index: int, conn: Connection, report_path: str) -> None:
    """A worker process's body (the ``spawn`` target)."""
    for number in _SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    spec.configure_logging(spec.config, spec.log_level)
    try:
        app = check_asgi(load_object(spec.app), spec.app, factory=spec.factory)
        backend = None if spec.backend is None else load_object(spec.backend, what="NAME")
    except LoadError as exc:  # the parent loaded it: an edit since (--reload) broke it
        sys.stderr.write(exc.user_traceback + f"worker {index}: {exc}\n")
        sys.exit(2)
    for sock in (*spec.sockets.secure_sockets, *spec.sockets.insecure_sockets):
        sock.listen(spec.config.backlog)
    report = trio.run(_serve_worker, spec, wrap(app, backend), conn)
    try:
        Path(report_path).write_text(report.to_json(indent=None))
    except OSError as exc:
        logger.error("worker %d: cannot write its report to %s: %s", index, report_path, exc)
        with contextlib.suppress(OSError):
            conn.send(("failed", f"cannot write its report: {exc}"))
        conn.close()
        leave(1)
    conn.close()
    leave(0)  # as the command line does: no teardown past the deadline


async def _serve_worker(
    spec: WorkerSpec, middleware: BackgroundTasksMiddleware, conn: Connection
) -> ShutdownReport:
    # Task ids unique across the workers: this process's are "<pid>-<batch>.<index>".
    WORKER.set(f"{os.getpid()}-")
    control = ShutdownControl(
        middleware,
        spec.mode,
        spec.drain_timeout,
        spec.shutdown_delay,
        freeze_gc=spec.freeze_gc,
        cleanup_margin=WORKER_CLEANUP_MARGIN,
    )

    async def listen(control: ShutdownControl) -> None:
        while True:
            await trio.lowlevel.wait_readable(conn.fileno())
            try:
                message: tuple[Any, ...] = conn.recv()
            except EOFError:  # the parent is gone: stop as if it had said so
                control.request("parent process gone")
                return
            # The parent's signal's arrival, on the system's monotonic clock.
            if message[0] == "shutdown":
                control.request("signal", at=trio_time_of(message[1]))
            elif message[0] == "escalate":
                control.escalate(at=trio_time_of(message[1]))
            elif message[0] == "retire":  # a new worker serves the edited code
                control.request("reload", at=trio_time_of(message[1]))

    async def report_statistics() -> None:
        while True:
            supervisor = control.supervisor
            statistics = dataclasses.asdict(supervisor.statistics())
            active, _ = supervisor.active_page(limit=LOST_SAMPLE)
            statistics["active_sample"] = [record.to_dict() for record in active]
            statistics["sent_at"] = time.monotonic()
            with contextlib.suppress(OSError):
                conn.send(("stats", statistics))
            await trio.sleep(STATS_INTERVAL)

    async def watch(control: ShutdownControl) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen, control)
            nursery.start_soon(report_statistics)

    reports: list[ShutdownReport] = []
    started = trio.Event()

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        reports.append(
            await serve_middleware(
                middleware,
                spec.config,
                control,
                watch,
                sockets=spec.sockets,
                started=started,
                task_status=task_status,
            )
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        await started.wait()  # a failed startup raises instead
        supervisor = control.supervisor
        ready: dict[str, Any] = {"mode": supervisor.mode, "drain_timeout": supervisor.drain_timeout}
        if spec.reload:  # what this worker imported, for the parent to watch too
            files = await trio.to_thread.run_sync(files_to_watch)
            ready["files"] = {str(path): mtime for path, mtime in files.items()}
        conn.send(("ready", ready))
    return reports[0]


@dataclasses.dataclass(eq=False)
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    report_path: Path
    generation: int = 0
    ready: dict[str, Any] | None = None
    retiring: bool = False
    # When the parent kills it if it still runs (trio's clock; a retired worker's).
    kill_at: float = float("inf")
    last_known: dict[str, Any] | None = None
    fate: str = "running"
    failure: str | None = None
    ended_at: float | None = None

    def send(self, *message: object) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(message)

    def section(self) -> dict[str, Any]:
        report: dict[str, Any] | None = None
        if self.fate in ("exited", "retired"):
            try:
                report = json.loads(self.report_path.read_text())
            except (OSError, ValueError) as exc:
                self.failure = self.failure or f"its report could not be read: {exc}"
        last_known = None
        if self.last_known is not None:
            last_known = {k: v for k, v in self.last_known.items() if k != "active_sample"}
        return {
            "worker": self.index,
            "pid": self.process.pid,
            "exit_code": self.process.exitcode,
            "fate": self.fate
            if report is not None or self.fate not in ("exited", "retired")
            else "no report",
            "last_known": last_known,
            "report": report,
        }

    def lost(self) -> dict[str, Any]:
        """What is known of the tasks of a worker that left no report."""
        code = self.process.exitcode
        if self.fate == "died":
            reason = f"the worker died (exit code {code}) while serving"
        elif self.fate == "killed" and self.retiring:
            reason = "the worker was still running at its retirement's deadline (a reload): killed"
        elif self.fate == "killed":
            reason = "the worker was still running at the exit deadline: killed"
        else:
            reason = f"the worker exited with code {code} and left no report"
            if self.failure:
                reason += f" ({self.failure})"
        known = self.last_known
        as_of = None
        if known is not None and self.ended_at is not None:
            as_of = round(max(0.0, self.ended_at - known["sent_at"]), 3)
        return {
            "worker": self.index,
            "pid": self.process.pid,
            "reason": reason,
            # What it last said (as_of seconds before it ended); None: nothing yet.
            "as_of": as_of,
            "tasks_active": None if known is None else known.get("tasks_active"),
            "batches_running": None if known is None else known.get("batches_running"),
            "counts": None if known is None else known.get("counts"),
            "tasks": [] if known is None else known.get("active_sample", []),
        }


class _Parent:
    def __init__(self, spec: WorkerSpec, count: int, folder: Path) -> None:
        self.spec = spec
        self.count = count
        self.folder = folder
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.live: set[_Worker] = set()
        # The ready worker that serves each index (retired ones are not here).
        self.serving: dict[int, _Worker] = {}
        self.generation = 0  # one more at each --reload change
        # Set at the first signal (or when the server cannot start): shutdown.
        self.stopped = trio.Event()
        self.failed = False
        self.exit_by = float("inf")
        self.exit_changed = trio.Event()
        self.signal_at = 0.0
        # Files ready workers imported, for the watcher to add (--reload).
        self.new_files: dict[Path, float] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def shutting_down(self) -> bool:
        return self.stopped.is_set()

    def spawn(self, index: int) -> _Worker:
        ours, theirs = self.context.Pipe()
        path = self.folder / f"worker-{len(self.workers)}.json"
        process = self.context.Process(
            target=worker_main,
            args=(self.spec, index, theirs, str(path)),
            name=f"trio-background worker {index}",
            daemon=True,
        )
        # Blocked signals are inherited: the worker ignores SIGINT/SIGTERM
        # from its first instruction on (a terminal's Ctrl-C reaches the whole
        # process group), and a signal meant for us is delivered on unblock.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        theirs.close()
        worker = _Worker(index, process, ours, path, generation=self.generation)
        self.workers.append(worker)
        self.live.add(worker)
        if self.shutting_down:
            worker.send("shutdown", self.signal_at)
        return worker

    def start(self, index: int) -> None:
        """Start a worker for ``index`` and follow it until it ends (from :meth:`run` on)."""
        if self._nursery is None:
            raise RuntimeError("start() is for the parent's run(), which follows the workers")
        self._nursery.start_soon(self._run, self.spawn(index))

    async def _run(self, worker: _Worker) -> None:
        await self._follow(worker)
        self.live.discard(worker)
        if self.serving.get(worker.index) is worker:
            del self.serving[worker.index]
        if self.shutting_down or self.failed or worker.retiring:
            return
        index = worker.index
        if worker.ready is None:
            if self.spec.reload and worker.generation > 0:
                # The edited code cannot start (its traceback is above): not
                # a reason to stop a development server.
                old = self.serving.get(index)
                logger.error(
                    "reload: worker %d (pid %s) exited with code %s before it was ready; %s",
                    index,
                    worker.process.pid,
                    worker.process.exitcode,
                    "no worker serves it until the next change"
                    if old is None
                    else f"worker {index} (pid {old.process.pid}) keeps serving the previous "
                    "code until the next change",
                )
                return
            logger.error(
                "worker %d (pid %s) exited with code %s before it was ready: stopping",
                index,
                worker.process.pid,
                worker.process.exitcode,
            )
            self.failed = True
            self.begin_shutdown()
            return
        if worker.process.exitcode == 0:  # it stopped by itself (max_requests)
            logger.info(
                "worker %d (pid %s) stopped by itself; starting a replacement",
                index,
                worker.process.pid,
            )
        else:
            worker.fate = "died"
            logger.error(
                "worker %d (pid %s) died (exit code %s) while serving; last known: %s; "
                "starting a replacement",
                index,
                worker.process.pid,
                worker.process.exitcode,
                _describe_statistics(worker.last_known),
            )
        self.start(index)

    async def _follow(self, worker: _Worker) -> None:
        conn = worker.conn
        while True:
            await trio.lowlevel.wait_readable(conn.fileno())
            try:
                kind, data = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                self._ready(worker, data)
            elif kind == "stats":
                worker.last_known = data
            elif kind == "failed":
                worker.failure = data
        conn.close()
        await trio.lowlevel.wait_readable(worker.process.sentinel)
        worker.process.join()
        worker.ended_at = time.monotonic()
        if worker.fate == "running":
            worker.fate = "retired" if worker.retiring else "exited"

    def _ready(self, worker: _Worker, ready: dict[str, Any]) -> None:
        """``worker`` serves: it replaces the one of its index, which retires."""
        files: dict[str, float] = ready.pop("files", {})
        worker.ready = ready
        self.new_files.update({Path(path): mtime for path, mtime in files.items()})
        if self.shutting_down:  # it got "shutdown" already
            return
        old = self.serving.get(worker.index)
        if old is not None and old.generation > worker.generation:
            self.retire(worker)  # a later change's worker was ready first
            return
        self.serving[worker.index] = worker
        if old is not None:
            logger.info(
                "reload: worker %d (pid %s) serves the new code; pid %s retires (its running "
                "tasks have until the drain deadline)",
                worker.index,
                worker.process.pid,
                old.process.pid,
            )
            self.retire(old)

    def retire(self, worker: _Worker) -> None:
        """Shut ``worker`` down as the first signal would; kill it if it outlives that."""
        if self.shutting_down:  # it shuts down with the others already
            return
        worker.retiring = True
        arrived = time.monotonic()
        worker.send("retire", arrived)
        worker.kill_at = trio_time_of(arrived) + self._deadline_in([worker]) + KILL_AFTER
        self._deadlines_changed()

    def reload(self, changed: list[Path]) -> None:
        """Start a new generation of workers for the edited code."""
        if self.shutting_down:
            return
        named = ", ".join(str(path) for path in changed[:RELOAD_NAMED])
        if len(changed) > RELOAD_NAMED:
            named += f" and {len(changed) - RELOAD_NAMED} more"
        logger.info(
            "reload: %s changed; starting %s",
            named or "a source file",
            "a new worker" if self.count == 1 else f"{self.count} new workers",
        )
        self.generation += 1
        for index in range(self.count):
            self.start(index)

    async def watch_files(self) -> None:
        """Reload on each change to a source file, checked every ``RELOAD_INTERVAL``."""
        files = await trio.to_thread.run_sync(files_to_watch)
        while not self.shutting_down:
            await trio.sleep(RELOAD_INTERVAL)
            # Merged here, not in the thread that reads ``files``.
            for path, mtime in self.new_files.items():
                files.setdefault(path, mtime)
            self.new_files.clear()
            changed = await trio.to_thread.run_sync(_changed_files, files)
            if changed is not None:
                self.reload(changed)

    def begin_shutdown(self, arrived: float | None = None) -> None:
        """The first signal, which arrived at ``arrived`` (monotonic; None: now)."""
        if self.shutting_down:
            return
        self.stopped.set()
        self.signal_at = time.monotonic() if arrived is None else arrived
        for worker in self.live:
            worker.send("shutdown", self.signal_at)
        # The deadline counts from the end of the delay (in both modes).
        deadline = self._deadline_in([w for w in self.live if not w.retiring])
        self._exit_within(self.spec.shutdown_delay + deadline + KILL_AFTER, arrived)

    def escalate(self, arrived: float | None = None) -> None:
        arrived = time.monotonic() if arrived is None else arrived
        for worker in self.live:
            worker.send("escalate", arrived)
        self._exit_within(KILL_AFTER, arrived)

    def _deadline_in(self, workers: list[_Worker]) -> float:
        """Seconds from now to the batch deadline of ``workers`` (the longest they said)."""
        policies = [w.ready for w in workers if w.ready is not None]
        modes = [self.spec.mode or p["mode"] for p in policies] or [self.spec.mode or "drain"]
        if all(mode == "cancel" for mode in modes):
            return 0.0
        if self.spec.drain_timeout is not None:
            return self.spec.drain_timeout
        return max((p["drain_timeout"] for p in policies), default=DEFAULT_DRAIN_TIMEOUT)

    def _exit_within(self, seconds: float, arrived: float | None) -> None:
        start = trio.current_time() if arrived is None else trio_time_of(arrived)
        self.exit_by = min(self.exit_by, start + seconds)
        self._deadlines_changed()

    def _deadlines_changed(self) -> None:
        """Wake :meth:`kill_late`: the exit deadline or a retired worker's moved."""
        self.exit_changed.set()
        self.exit_changed = trio.Event()

    async def kill_late(self) -> None:
        """Kill the workers still running when their exit deadline comes.

        That is the server's after the first signal, or a retired worker's own.
        """
        while True:
            killable = [w.kill_at for w in self.live if w.fate != "killed"]
            next_at = min([self.exit_by, *killable])
            with trio.move_on_at(next_at):
                await self.exit_changed.wait()
                continue
            now = trio.current_time()
            for worker in list(self.live):
                if min(self.exit_by, worker.kill_at) > now or worker.fate == "killed":
                    continue
                logger.error(
                    "worker %d (pid %s) still running at %s: killed; last known: %s",
                    worker.index,
                    worker.process.pid,
                    "its retirement's deadline" if self.exit_by > now else "the exit deadline",
                    _describe_statistics(worker.last_known),
                )
                worker.fate = "killed"
                worker.process.kill()
            if self.exit_by <= now:
                return

    async def run(self, signalled_before: Callable[[], float | None]) -> None:
        with signal_arrivals() as signals:
            if (arrived := signalled_before()) is not None:  # while this process started
                self.begin_shutdown(arrived)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals)
                nursery.start_soon(self.kill_late)
                if self.spec.reload:
                    nursery.start_soon(self.watch_files)
                async with trio.open_nursery() as workers:
                    self._nursery = workers
                    for index in range(self.count):
                        self.start(index)
                    # Open until shutdown, even while no worker runs (--reload,
                    # after an edit that cannot start).
                    await self.stopped.wait()
                nursery.cancel_scope.cancel()

    async def _watch_signals(self, signals: AsyncIterator[float]) -> None:
        async for arrived in signals:
            if self.shutting_down:
                self.escalate(arrived)
            else:
                self.begin_shutdown(arrived)


def _changed_files(files: dict[Path, float]) -> list[Path] | None:
    """The watched files changed since the last look (None: none), and look again from now.

    A file changed when its modification time is another than last seen, in
    either direction (``cp -p`` or an editor restoring a backup can move it
    back; Hypercorn's ``check_for_updates`` only sees it move forward), or it
    is gone (then it is watched again once a new worker imports it).
    """
    changed: list[Path] = []
    for path, seen in list(files.items()):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            del files[path]
            changed.append(path)
            continue
        if mtime != seen:
            files[path] = mtime
            changed.append(path)
    return changed or None


def _describe_statistics(statistics: dict[str, Any] | None) -> str:
    if statistics is None:
        return "nothing reported yet"
    counts = ", ".join(f"{n} {state}" for state, n in statistics.get("counts", {}).items())
    active = statistics.get("tasks_active")  # in the statistics of newer cores
    running = f"{statistics.get('batches_running', 0)} batches running"
    if active is not None:
        running += f" ({active} tasks active)"
    return f"{running}; so far {counts}"


def merge(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the workers' sections: summed counts, every kept record."""
    reports = [s["report"] for s in sections if s["report"] is not None]
    counts = {state.value: 0 for state in FINAL_STATES}
    for report in reports:
        for state, n in report["counts"].items():
            counts[state] = counts.get(state, 0) + n
    # The mode in force at the end: a worker that was idle may have finished
    # its drain before a second signal cut the others. Workers retired by a
    # reload stopped for their own reason, earlier.
    finals = [s["report"] for s in sections if s["report"] is not None and s["fate"] != "retired"]
    modes = sorted(
        (r for r in finals or reports if r["mode"] is not None),
        key=lambda r: r["mode"] != "cancel",
    )
    merged: dict[str, Any] = {
        "mode": modes[0]["mode"] if modes else None,
        "cause": modes[0].get("cause") if modes else None,
        "drain_timeout": modes[0]["drain_timeout"] if modes else None,
        "total": sum(counts.values()),
        "counts": counts,
    }
    for state in counts:
        merged[state] = [
            {**record, "worker": section["worker"]}
            for section in sections
            if section["report"] is not None
            for record in section["report"].get(state, [])
        ]
    merged["workers"] = sections
    return merged


def run_workers(
    spec: WorkerSpec, count: int, folder: Path, signalled_before: Callable[[], float | None]
) -> tuple[dict[str, Any], bool]:
    """Run ``count`` workers until shutdown; the merged report and whether all went well.

    ``signalled_before()``: when SIGINT/SIGTERM came before this process
    watched them (a monotonic time; shutdown then begins at once), or None.
    All went well when no worker died, was killed or left no report.
    """
    parent = _Parent(spec, count, folder)
    trio.run(unhook_signal_wakeup, partial(parent.run, signalled_before))
    workers = sorted(parent.workers, key=lambda w: w.index)  # stable: spawn order within
    sections = [worker.section() for worker in workers]
    merged = merge(sections)
    # A worker that never got ready (the app cannot start) had nothing to lose.
    lost = [
        worker.lost()
        for worker, section in zip(workers, sections, strict=True)
        if worker.ready is not None and section["report"] is None
    ]
    merged["lost"] = lost
    merged["lost_tasks"] = sum(entry["tasks_active"] or 0 for entry in lost)
    summary = ShutdownReport(
        mode=merged["mode"],
        cause=merged["cause"],
        drain_timeout=merged["drain_timeout"],
        counts=merged["counts"],
    ).summary()
    line = f"{count} workers: {summary}"
    if spec.reload:
        line = (
            f"{count} worker{'s' if count > 1 else ''}, {len(workers)} processes over "
            f"{parent.generation} reload{'s' if parent.generation != 1 else ''}: {summary}"
        )
    if lost:
        line += (
            f"; {len(lost)} worker processes left no report, with "
            f"{merged['lost_tasks']} tasks in flight when last heard from (see lost)"
        )
        logger.error("%s", line)
    elif merged["counts"].get("completed", 0) == merged["total"]:
        logger.info("%s", line)
    else:
        logger.warning("%s", line)
    return merged, not parent.failed and not lost
