"""In-process dispatch cost: how long one batch takes per task, no server.

Run by ``bench/run.py`` in a fresh process (``python -m bench.dispatch``),
which prints one line of JSON. Variants, interleaved and rotated each repeat:

- ``floor``: the bare loop, ``for f in fs: await f()`` (async), or
  ``for f in fs: await trio.to_thread.run_sync(f)`` (sync: one thread hop
  per call, nothing else);
- ``starlette``: ``starlette.background.BackgroundTasks``, ``await tasks()``;
- ``ours``: ``trio_background.BackgroundTasks`` run by
  ``Supervisor().run(batch)``, which keeps a record of every task;
- ``ours_policy``: the same, the function decorated with
  ``@trio_background.task(retries=1)`` (no attempt fails);
- ``ours_limit``: the same with ``@trio_background.task(limit=...)`` far above
  the batch's size (a limit below its bound should add no wait);
- ``ours_timeout``: the same with ``@trio_background.task(timeout=60)``: a
  cancel scope per attempt, trio's price for a deadline of its own.

``add`` is the time to build the batch (``add_task`` per task), ``run`` the
time to run it; both in nanoseconds per task.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import trio
from starlette.background import BackgroundTasks as StarletteTasks

import trio_background
from trio_background import BackgroundTasks, Supervisor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["VARIANTS", "main", "measure"]

VARIANTS = ("floor", "starlette", "ours", "ours_policy", "ours_limit", "ours_timeout")


async def noop() -> None:
    return None


def noop_sync() -> None:
    return None


@trio_background.task(retries=1)
async def noop_policy() -> None:
    return None


@trio_background.task(retries=1)
def noop_policy_sync() -> None:
    return None


@trio_background.task(timeout=60)
async def noop_timeout() -> None:
    return None


@trio_background.task(timeout=60)
def noop_timeout_sync() -> None:
    return None


@trio_background.task(limit=10_000_000)
async def noop_limit() -> None:
    return None


@trio_background.task(limit=10_000_000)
def noop_limit_sync() -> None:
    return None


async def _floor(count: int, is_async: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    fs: list[Callable[[], Any]] = [noop if is_async else noop_sync] * count
    t1 = time.perf_counter()
    if is_async:
        for f in fs:
            await f()
    else:
        for f in fs:
            await trio.to_thread.run_sync(f)
    return t1 - t0, time.perf_counter() - t1


async def _starlette(count: int, is_async: bool) -> tuple[float, float]:
    func: Callable[[], Any] = noop if is_async else noop_sync
    t0 = time.perf_counter()
    tasks = StarletteTasks()
    for _ in range(count):
        tasks.add_task(func)
    t1 = time.perf_counter()
    await tasks()
    return t1 - t0, time.perf_counter() - t1


async def _ours(
    count: int,
    is_async: bool,
    funcs: tuple[Callable[[], Any], Callable[[], Any]] = (noop, noop_sync),
) -> tuple[float, float]:
    func: Callable[[], Any] = funcs[0] if is_async else funcs[1]
    supervisor = Supervisor()
    t0 = time.perf_counter()
    batch = BackgroundTasks()
    for _ in range(count):
        batch.add_task(func)
    t1 = time.perf_counter()
    await supervisor.run(batch)
    elapsed = time.perf_counter() - t1
    counts = supervisor.statistics().counts
    if counts["completed"] != count:
        raise RuntimeError(f"expected {count} completed tasks, the supervisor says {counts}")
    return t1 - t0, elapsed


async def _ours_policy(count: int, is_async: bool) -> tuple[float, float]:
    return await _ours(count, is_async, (noop_policy, noop_policy_sync))


async def _ours_limit(count: int, is_async: bool) -> tuple[float, float]:
    return await _ours(count, is_async, (noop_limit, noop_limit_sync))


async def _ours_timeout(count: int, is_async: bool) -> tuple[float, float]:
    return await _ours(count, is_async, (noop_timeout, noop_timeout_sync))


_RUNNERS: dict[str, Callable[[int, bool], Awaitable[tuple[float, float]]]] = {
    "floor": _floor,
    "starlette": _starlette,
    "ours": _ours,
    "ours_policy": _ours_policy,
    "ours_limit": _ours_limit,
    "ours_timeout": _ours_timeout,
}


async def measure(async_tasks: int, sync_tasks: int, repeats: int) -> dict[str, Any]:
    """Every variant, async and sync, ``repeats`` times in rotated order.

    Returns:
        ``{"async"|"sync": {variant: {"add_ns": [...], "run_ns": [...],
        "add_ns_median": x, "run_ns_median": y}}}``.
    """
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        kind: {v: {"add_ns": [], "run_ns": []} for v in VARIANTS} for kind in ("async", "sync")
    }
    # One untimed pass warms imports, caches and trio's worker threads.
    for variant in VARIANTS:
        await _RUNNERS[variant](min(async_tasks, 1000), True)
        await _RUNNERS[variant](min(sync_tasks, 100), False)
    for repeat in range(repeats):
        shift = repeat % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for kind, count in (("async", async_tasks), ("sync", sync_tasks)):
            for variant in order:
                gc.collect()
                add, run = await _RUNNERS[variant](count, kind == "async")
                samples[kind][variant]["add_ns"].append(add / count * 1e9)
                samples[kind][variant]["run_ns"].append(run / count * 1e9)
    result: dict[str, Any] = {}
    for kind, by_variant in samples.items():
        result[kind] = {}
        for variant, values in by_variant.items():
            result[kind][variant] = {
                **values,
                "add_ns_median": statistics.median(values["add_ns"]),
                "run_ns_median": statistics.median(values["run_ns"]),
            }
    result["tasks"] = {"async": async_tasks, "sync": sync_tasks}
    result["repeats"] = repeats
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    parser.add_argument("--async-tasks", type=int, default=100_000)
    parser.add_argument("--sync-tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = trio.run(measure, args.async_tasks, args.sync_tasks, args.repeats)
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
