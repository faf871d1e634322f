"""What one poll of the monitor costs the event loop, with 20,000 tasks in flight.

Run it from the project's root::

    python -m bench.monitor_poll            # or: python bench/monitor_poll.py

A :class:`Supervisor` first runs 200 tasks to the end (so its history of
finished tasks is full, as on a server that has been up for a while), then
20 batches of 1,000 tasks each that wait on one event: 20 tasks running and
19,980 pending, 20,000 active. The monitor app
(``monitor(supervisor)``) is then called as Hypercorn would call it, with a
``send`` that keeps the bytes and never waits, so the whole call is time the
event loop spends on the poll and nothing else runs meanwhile:
``time.perf_counter_ns`` around it is the loop time. Each case is repeated,
the cases interleaved, and the table shows the median (fastest, slowest).

Cases: ``GET /tasks`` (the page's poll, one page of 100), ``GET
/tasks?limit=1000`` (the largest page), ``GET /`` (the page itself), and, for
comparison, what a poll cost before issue 15: the whole snapshot as JSON.
The target is 10 ms for the page's poll; the exit status is 1 if it misses.

The results also go to ``bench/results/monitor_poll.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trio_background
from bench._table import aligned
from trio_background import BackgroundTasks, Supervisor, monitor

TARGET_MS = 10.0
RESULTS = Path(__file__).resolve().parent / "results" / "monitor_poll.json"

POLL = "GET /tasks (page of 100)"
BIG = "GET /tasks?limit=1000"
PAGE = "GET / (the HTML page)"
BEFORE = "before: whole snapshot as JSON"
CASES = {POLL: ("/tasks", b""), BIG: ("/tasks", b"limit=1000"), PAGE: ("/", b"")}


async def _call(app: Any, path: str, query: bytes) -> tuple[int, int]:
    """Call the monitor once; return (ns, bytes of body)."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": [],
    }
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message["body"])

    start = time.perf_counter_ns()
    await app(scope, receive, send)
    elapsed = time.perf_counter_ns() - start
    return elapsed, sum(map(len, body))


def _before(supervisor: Supervisor) -> tuple[int, int]:
    start = time.perf_counter_ns()
    data = json.dumps(supervisor.snapshot().to_dict()).encode()
    return time.perf_counter_ns() - start, len(data)


async def measure(batches: int, per_batch: int, repeats: int) -> dict[str, dict[str, Any]]:
    supervisor = Supervisor()
    app = monitor(supervisor)
    release = trio.Event()
    results: dict[str, dict[str, Any]] = {case: {"ms": [], "bytes": 0} for case in (*CASES, BEFORE)}
    # A full history first: the poll also returns the most recent finished tasks.
    done = BackgroundTasks()
    for _ in range(supervisor.keep_records * 2):
        done.add_task(trio.lowlevel.checkpoint)
    await supervisor.run(done)
    async with trio.open_nursery() as nursery:
        for _ in range(batches):
            batch = BackgroundTasks()
            for _ in range(per_batch):
                batch.add_task(release.wait)
            nursery.start_soon(supervisor.run, batch)
        await trio.testing.wait_all_tasks_blocked()
        active = supervisor.statistics().tasks_active
        if active != batches * per_batch:
            raise RuntimeError(f"expected {batches * per_batch} active tasks, found {active}")
        for path, query in CASES.values():  # warm-up
            await _call(app, path, query)
        for _ in range(repeats):
            for case, (path, query) in CASES.items():
                ns, size = await _call(app, path, query)
                results[case]["ms"].append(ns / 1e6)
                results[case]["bytes"] = size
            ns, size = _before(supervisor)
            results[BEFORE]["ms"].append(ns / 1e6)
            results[BEFORE]["bytes"] = size
        release.set()
    return results


def _verdict(case: str, median: float) -> bool | None:
    return median <= TARGET_MS if case == POLL else None


def _table(results: dict[str, dict[str, Any]], active: int, repeats: int) -> str:
    rows = [("case", "active", "runs", "bytes", "median ms", "min", "max", "target", "result")]
    for case, data in results.items():
        values: list[float] = data["ms"]
        median = statistics.median(values)
        verdict = _verdict(case, median)
        rows.append(
            (
                case,
                f"{active:,}",
                str(repeats),
                f"{data['bytes']:,}",
                f"{median:.2f}",
                f"{min(values):.2f}",
                f"{max(values):.2f}",
                "-" if verdict is None else f"{TARGET_MS:g} ms",
                "-" if verdict is None else "pass" if verdict else "FAIL",
            )
        )
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.monitor_poll", description=__doc__)
    parser.add_argument("--batches", type=int, default=20, help="batches in flight (20)")
    parser.add_argument("--per-batch", type=int, default=1_000, help="tasks per batch (1,000)")
    parser.add_argument("--repeats", type=int, default=20, help="polls per case (20)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"where to write the results ({RESULTS})"
    )
    args = parser.parse_args(argv)
    if min(args.batches, args.per_batch, args.repeats) < 1:
        parser.error("--batches, --per-batch and --repeats must be at least 1")
    active = args.batches * args.per_batch

    results = trio.run(measure, args.batches, args.per_batch, args.repeats)
    print(
        f"monitor poll cost: Python {platform.python_version()}, trio {trio.__version__}, "
        f"trio-background {trio_background.__version__}, {platform.machine()}"
    )
    print(_table(results, active, args.repeats))
    summary: dict[str, Any] = {
        "benchmark": "monitor_poll",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "trio": trio.__version__,
        "trio_background": trio_background.__version__,
        "active": active,
        "repeats": args.repeats,
        "target_ms": TARGET_MS,
        "cases": {
            case: {
                "ms": [round(v, 3) for v in data["ms"]],
                "median_ms": round(statistics.median(data["ms"]), 3),
                "bytes": data["bytes"],
                "passed": _verdict(case, statistics.median(data["ms"])),
            }
            for case, data in results.items()
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.json}")
    passed = all(case["passed"] is not False for case in summary["cases"].values())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
