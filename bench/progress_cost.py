"""What one ``report_progress()`` call costs inside a running background task.

Run it from the project's root::

    python -m bench.progress_cost            # or: python bench/progress_cost.py

Each case runs one real background task under a :class:`Supervisor` (as the
middleware does after a response): a sync task, in its worker thread, and an
async task, in trio's thread. The task times ``calls`` calls of
``report_progress(i, calls, message=...)`` with ``time.perf_counter_ns``
around the whole loop, so the loop's own cost is included: the figure is an
upper bound. A third row, the floor, times the same loop calling a function
that does nothing, with the same arguments: what any call costs. Each case is
repeated, the cases interleaved, and the table shows the median of the
repeats (and the fastest and slowest) against the target, 2 µs per call. The
exit status is 1 if a case misses it.

The results also go to ``bench/results/progress_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import trio_background
from bench._table import aligned
from trio_background import BackgroundTasks, Supervisor, report_progress

if TYPE_CHECKING:
    from collections.abc import Callable

TARGET_NS = 2_000
"""The budget for one call, in nanoseconds."""
RESULTS = Path(__file__).resolve().parent / "results" / "progress_cost.json"

SYNC = "sync task (worker thread)"
ASYNC = "async task"
FLOOR = "floor: a no-op call"
CASES = (SYNC, ASYNC, FLOOR)
"""The floor is the same loop calling a function that does nothing: the part
of each figure that any Python call with these arguments costs."""


def _noop(done: float, total: float | None = None, *, message: str | None = None) -> None:
    return None


def _loop(report: Callable[..., None], calls: int, out: list[int]) -> None:
    start = time.perf_counter_ns()
    for i in range(calls):
        report(i, calls, message="working")
    out.append(time.perf_counter_ns() - start)


def _sync_task(calls: int, out: list[int]) -> None:
    _loop(report_progress, calls, out)


async def _async_task(calls: int, out: list[int]) -> None:
    _loop(report_progress, calls, out)


async def _measure_once(case: str, calls: int) -> int:
    """Run one background task that makes ``calls`` calls; return the loop's ns."""
    out: list[int] = []
    if case == FLOOR:
        _loop(_noop, calls, out)
        [elapsed] = out
        return elapsed
    batch = BackgroundTasks()
    if case == SYNC:
        batch.add_task(_sync_task, calls, out)
    else:
        batch.add_task(_async_task, calls, out)
    supervisor = Supervisor()
    await supervisor.run(batch, request="bench")
    report = supervisor.close()
    if report.count("completed") != 1:
        raise RuntimeError(f"the benchmark task did not complete: {report.summary()}")
    [elapsed] = out
    return elapsed


async def measure(calls: int, repeats: int) -> dict[str, list[float]]:
    """ns per call for each case, one value per repeat (cases interleaved)."""
    per_call: dict[str, list[float]] = {case: [] for case in CASES}
    for case in CASES:  # warm-up: imports, thread pool, caches
        await _measure_once(case, min(calls, 1_000))
    for _ in range(repeats):
        for case in CASES:
            per_call[case].append(await _measure_once(case, calls) / calls)
    return per_call


def _verdict(case: str, median: float) -> bool | None:
    """Whether ``case`` meets the target (None for the floor, which has none)."""
    return None if case == FLOOR else median <= TARGET_NS


def _table(per_call: dict[str, list[float]], calls: int, repeats: int) -> str:
    rows = [("case", "calls x runs", "median ns/call", "min", "max", "target", "result")]
    for case, values in per_call.items():
        median = statistics.median(values)
        verdict = _verdict(case, median)
        rows.append(
            (
                case,
                f"{calls:,} x {repeats}",
                f"{median:.0f}",
                f"{min(values):.0f}",
                f"{max(values):.0f}",
                "-" if verdict is None else f"{TARGET_NS:,}",
                "-" if verdict is None else "pass" if verdict else "FAIL",
            )
        )
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.progress_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per run (200,000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (5)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"where to write the results ({RESULTS})"
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be at least 1")

    per_call = trio.run(measure, args.calls, args.repeats)
    print(
        f"report_progress() cost: Python {platform.python_version()}, trio {trio.__version__}, "
        f"trio-background {trio_background.__version__}, {platform.machine()}"
    )
    print(_table(per_call, args.calls, args.repeats))

    results: dict[str, Any] = {
        "benchmark": "progress_cost",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "trio": trio.__version__,
        "trio_background": trio_background.__version__,
        "calls": args.calls,
        "repeats": args.repeats,
        "target_ns": TARGET_NS,
        "cases": {
            case: {
                "ns_per_call": [round(v, 1) for v in values],
                "median_ns": round(statistics.median(values), 1),
                "passed": _verdict(case, statistics.median(values)),
            }
            for case, values in per_call.items()
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.json}")
    passed = all(case["passed"] is not False for case in results["cases"].values())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
