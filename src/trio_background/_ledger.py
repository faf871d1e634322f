"""The ledger: exact counts of every ended task, and a bounded set of records.

Every task that ends is written here once, as a raw record. Counts per final
state are exact forever; records are kept in two stores: every task that
shutdown *cut* (cancelled, abandoned, skipped by the deadline, or overran it),
which is bounded by the work in flight when shutdown came, and the most
recent ``keep`` others per final state. So memory stays flat on a server that
runs for months, and during a drain that runs a thousand tasks.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

from ._records import FINAL_STATES, RawRecord, ShutdownReport, TaskRecord, build_record
from ._tasks import TaskState

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Ledger"]


class Ledger:
    """Counts and kept records of one supervisor's trio run.

    Args:
        epoch: Trio clock time that record times count from.
        keep: Recent records kept per final state (besides cut ones).
        worker: The worker process's id prefix, or ``""``.
    """

    __slots__ = ("_counts", "_cut", "_recent", "epoch", "worker")

    def __init__(self, epoch: float, keep: int, worker: str = "") -> None:
        self.epoch = epoch
        self.worker = worker
        self._counts = dict.fromkeys(FINAL_STATES, 0)
        self._recent: dict[TaskState, deque[RawRecord]] = {
            state: deque(maxlen=keep) for state in FINAL_STATES
        }
        self._cut: list[RawRecord] = []

    def record(self, raw: RawRecord) -> TaskRecord:
        """The :class:`TaskRecord` of ``raw``."""
        return build_record(raw, self.epoch, self.worker)

    def write(self, raw: RawRecord, cut: bool) -> None:
        """Count ``raw``; keep it for good if shutdown ``cut`` the task."""
        self._counts[raw.state] += 1
        if cut:
            self._cut.append(raw)
        else:
            self._recent[raw.state].append(raw)

    def late(self, deadline: float) -> list[RawRecord]:
        """Stamp the overrun of tasks that ran and ended after ``deadline``, a deadline set late.

        A signal that arrived while a task blocked the event loop is heard
        only once the loop is free: the deadline counts from the signal, so a
        task that ended between it and now overran it. Their records become
        records shutdown cut (kept for good); the stamped ones are returned.
        """
        stamped: list[RawRecord] = []
        for records in self._recent.values():
            for i, raw in enumerate(records):
                if raw.started is not None and raw.ended is not None and raw.ended > deadline:
                    records[i] = raw._replace(overrun=raw.ended - deadline)
                    stamped.append(records[i])
        for raw in stamped:
            self._recent[raw.state].remove(raw)
            self._cut.append(raw)
        return stamped

    @property
    def counts(self) -> dict[str, int]:
        """Exact number of ended tasks per final state (keys: the state values)."""
        return {state.value: n for state, n in self._counts.items()}

    def _kept(self) -> Iterator[RawRecord]:
        for records in self._recent.values():
            yield from records
        yield from self._cut

    def kept(self) -> list[TaskRecord]:
        """Every kept record, in batch order then task order."""
        raws = sorted(self._kept(), key=lambda raw: (raw.batch, raw.task_index))
        return [build_record(raw, self.epoch, self.worker) for raw in raws]

    def recent(self, limit: int) -> list[TaskRecord]:
        """The ``limit`` last kept records in batch then task order, building only those."""
        raws = heapq.nlargest(limit, self._kept(), key=lambda raw: (raw.batch, raw.task_index))
        raws.reverse()
        return [build_record(raw, self.epoch, self.worker) for raw in raws]

    def find(self, batch: int, index: int) -> TaskRecord | None:
        """The kept record of task ``batch.index``, or None."""
        for raw in self._kept():
            if raw.batch == batch and raw.task_index == index:
                return build_record(raw, self.epoch, self.worker)
        return None

    def since(self, when: float) -> float:
        """``when`` (trio's clock) as seconds since the epoch."""
        return round(when - self.epoch, 6)

    def report(
        self,
        *,
        mode: str | None,
        cause: str | None,
        drain_timeout: float | None,
        shutdown_started_at: float | None,
        deadline: float,
    ) -> ShutdownReport:
        """The report of everything written so far."""
        by_state: dict[TaskState, list[TaskRecord]] = {s: [] for s in FINAL_STATES}
        for record in self.kept():
            by_state[record.state].append(record)
        return ShutdownReport(
            mode=mode,
            cause=cause,
            drain_timeout=drain_timeout,
            shutdown_started_at=(
                None if shutdown_started_at is None else self.since(shutdown_started_at)
            ),
            deadline=None if math.isinf(deadline) else self.since(deadline),
            counts=self.counts,
            completed=tuple(by_state[TaskState.COMPLETED]),
            failed=tuple(by_state[TaskState.FAILED]),
            cancelled=tuple(by_state[TaskState.CANCELLED]),
            skipped=tuple(by_state[TaskState.SKIPPED]),
            abandoned=tuple(by_state[TaskState.ABANDONED]),
            handed_off=tuple(by_state[TaskState.HANDED_OFF]),
        )
