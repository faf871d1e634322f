"""Fault suite: seeded faults against real server processes under load, and a checker.

``make chaos`` (``python -m bench.chaos --runs 50``) starts
``python -m trio_background bench.apps.chaos_app:app`` once per run, drives
it with bounded load (``CONCURRENCY`` clients, at most ``MAX_REQUESTS``
requests, each adding two tasks), applies one fault, and checks the history:

- every request answered 2xx has each of its tasks in the report, exactly
  once (any final state), or was answered by a worker process that the
  merged report lists in ``lost`` (column "of lost workers"; "lost" sums
  the ``tasks_active`` those entries report); a fault that leaves no report
  possible (SIGKILL of the server, a report path that cannot be written)
  counts its tasks as ``killed`` and must end with the exit status that
  says so; "unaccounted" and "duplicated" must be 0;
- the process exits by its deadline + 1 s (the deadline: the signal, plus
  the shutdown delay, plus the drain timeout in drain mode; a second signal
  brings it to the second signal), measured from when this program sent
  the signal, on a thread that waits on the process's pidfd;
- the exit status is the one the fault calls for (0; 1 when a worker died
  or a report could not be written; -9 for SIGKILL).

It prints one table row per fault and exits 1 if any run broke a rule.
Faults on a durable engine (Redis killed, made slow) are covered by the
durable suite, not here. Each run's plan comes from its seed: the same
seeds apply the same faults at the same points of the load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

from bench._table import aligned

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.apps.chaos_app:app"
FAULTS = (
    "sigterm",
    "second_signal",
    "sigterm_storm",
    "sigint_storm",
    "kill_worker",
    "kill_web",
    "report_dir",
)
TASKS_PER_REQUEST = 2
CONCURRENCY = 16
MAX_REQUESTS = 1500
EXIT_BOUND = 1.0  # the design's: exit by the deadline + 1 s
MIN_ANSWERED = 20  # requests answered before the fault
HANG_LIMIT = 30.0  # a process still alive this long after its deadline is killed


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    fault: str
    mode: str
    drain_timeout: float
    shutdown_delay: float
    workers: int
    warmup: float  # seconds of load before the fault
    pause: float  # between the fault's steps (second signal, kill then SIGTERM)
    storm: int  # signals in a storm

    @classmethod
    def of(cls, seed: int) -> Plan:
        rng = random.Random(seed)
        fault = FAULTS[seed % len(FAULTS)]
        workers = 2 if fault == "kill_worker" else 1 if fault == "kill_web" else rng.choice((1, 2))
        return cls(
            seed=seed,
            fault=fault,
            mode=rng.choice(("drain", "cancel")),
            drain_timeout=rng.choice((0.5, 1.0, 2.0)),
            shutdown_delay=rng.choice((0.0, 0.0, 0.5)),
            workers=workers,
            warmup=rng.uniform(0.3, 1.0),
            pause=rng.uniform(0.05, 0.6),
            storm=rng.randint(5, 300),
        )


@dataclasses.dataclass
class Outcome:
    plan: Plan
    answered: dict[int, int]  # rid -> pid of the process that answered 2xx
    exit_code: int | None
    exit_after_deadline: float | None  # seconds; None when no bound applies
    report: dict[str, Any] | None
    output: str
    victim: int | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    counts: Counter[str] = dataclasses.field(default_factory=Counter[str])


def _exit_time(pidfd: int) -> float:
    """Block until the process of ``pidfd`` has exited; when that was (monotonic)."""
    select.select([pidfd], [], [])
    return time.monotonic()


async def run_one(plan: Plan, folder: Path) -> Outcome:
    """Run ``plan`` once against a fresh server process; check the history."""
    report_path = folder / f"report-{plan.seed}.json"
    args = [
        sys.executable, "-m", "trio_background", APP, "--bind", "127.0.0.1:0",
        "--mode", plan.mode, "--drain-timeout", str(plan.drain_timeout),
        "--shutdown-delay", str(plan.shutdown_delay), "--workers", str(plan.workers),
        "--report-json", str(report_path),
        "--log-level", os.environ.get("CHAOS_LOG_LEVEL", "warning"),
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(args, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stderr is not None
    pidfd = os.pidfd_open(process.pid)
    output = ""
    answered: dict[int, int] = {}
    ready = trio.Event()
    exit_times: list[float] = []

    async def read_output() -> None:
        nonlocal output
        assert process.stderr is not None
        while chunk := await process.stderr.receive_some():
            output += chunk.decode(errors="replace")
            if len(re.findall(r"Running on http://\S+ ", output)) >= plan.workers:
                ready.set()

    async def wait_exit() -> None:
        exit_times.append(await trio.to_thread.run_sync(_exit_time, pidfd, abandon_on_cancel=True))
        exited.set()

    rids = iter(range(plan.seed * 1_000_000, plan.seed * 1_000_000 + MAX_REQUESTS))

    async def client_loop(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for rid in rids:
                try:
                    response = await client.post(f"/work/{rid}")
                except httpx.ConnectError:
                    if faulted.is_set():
                        return  # not accepting any more
                    await trio.sleep(0.01)  # a worker not listening yet
                    continue
                except httpx.HTTPError:
                    continue  # cut, or the process died: not acknowledged
                if 200 <= response.status_code < 300:
                    answered[rid] = response.json()["pid"]
                    if len(answered) >= MIN_ANSWERED:
                        under_way.set()

    deadline = float("inf")
    faulted = trio.Event()
    under_way = trio.Event()
    exited = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_output)
        nursery.start_soon(wait_exit)
        with trio.fail_after(30):
            await ready.wait()
        url = re.search(r"Running on (http://\S+) ", output).group(1)  # type: ignore[union-attr]
        async with trio.open_nursery() as load:
            for _ in range(CONCURRENCY):
                load.start_soon(client_loop, url)
            await trio.sleep(plan.warmup)
            with trio.move_on_after(10):  # until the load is really under way
                await under_way.wait()
            faulted.set()
            deadline, victim = await _apply(plan, process, answered, report_path)
            with trio.move_on_after(HANG_LIMIT + 10):
                await exited.wait()
            load.cancel_scope.cancel()
        if not exit_times:
            process.kill()
        exit_code = await process.wait()
    os.close(pidfd)
    report = None
    if report_path.is_file():
        with contextlib.suppress(ValueError):
            report = json_load(report_path)
    after = None if plan.fault == "kill_web" else exit_times[0] - deadline
    outcome = Outcome(plan, answered, exit_code, after, report, output, victim)
    check(outcome)
    return outcome


async def _apply(
    plan: Plan, process: trio.Process, answered: dict[int, int], report_path: Path
) -> tuple[float, int | None]:
    """Apply the fault; the process's deadline (monotonic) and the worker killed, if any."""
    rng = random.Random(plan.seed + 1)
    stop_in = plan.shutdown_delay + (plan.drain_timeout if plan.mode == "drain" else 0.0)

    def send(signum: int) -> float:
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        return sent

    if plan.fault == "sigterm":
        return send(signal.SIGTERM) + stop_in, None
    if plan.fault == "second_signal":
        first = send(signal.SIGTERM)
        await trio.sleep(plan.pause)
        return min(first + stop_in, send(signal.SIGTERM)), None
    if plan.fault in ("sigterm_storm", "sigint_storm"):
        signum = signal.SIGTERM if plan.fault == "sigterm_storm" else signal.SIGINT
        first = send(signum)
        second = float("inf")
        for _ in range(plan.storm - 1):
            await trio.sleep(rng.uniform(0.0001, 0.005))  # the storm's pace
            if process.returncode is not None:
                break
            second = min(second, send(signum))
        return min(first + stop_in, second), None
    if plan.fault == "kill_worker":
        pids = sorted({pid for pid in answered.values() if pid != process.pid})
        victim = rng.choice(pids) if pids else None
        if victim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        await trio.sleep(plan.pause)
        return send(signal.SIGTERM) + stop_in, victim
    if plan.fault == "kill_web":
        send(signal.SIGKILL)
        return float("inf"), None
    if plan.fault == "report_dir":
        await trio.Path(report_path).mkdir()  # checked at startup; the disk changed since
        return send(signal.SIGTERM) + stop_in, None
    raise ValueError(f"unknown fault {plan.fault!r}")


def json_load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def check(outcome: Outcome) -> None:
    """Fill ``outcome.counts`` and ``outcome.problems`` from the history."""
    plan, report, counts = outcome.plan, outcome.report, outcome.counts
    counts["requests"] = len(outcome.answered)
    counts["tasks"] = TASKS_PER_REQUEST * len(outcome.answered)
    expected_exit = {"kill_web": -signal.SIGKILL, "report_dir": 1, "kill_worker": 1}.get(
        plan.fault, 0
    )
    if plan.fault == "kill_worker" and outcome.victim is None:
        expected_exit = 0  # no worker had answered yet: nothing was killed
    if outcome.exit_code != expected_exit:
        counts["wrong status"] += 1
        outcome.problems.append(f"exit status {outcome.exit_code}, expected {expected_exit}")
    after = outcome.exit_after_deadline
    if after is not None and after > EXIT_BOUND:
        counts["late exits"] += 1
        outcome.problems.append(f"exited {after:.2f} s after the deadline")
    if "Traceback" in outcome.output:
        counts["tracebacks"] += 1
        outcome.problems.append("a traceback on stderr")
    if plan.fault in ("kill_web", "report_dir"):
        if report is not None:
            outcome.problems.append("a report was written despite the fault")
        counts["killed"] += counts["tasks"]
        return
    if report is None:
        outcome.problems.append("no report")
        counts["unaccounted"] += counts["tasks"]
        return
    per_request: Counter[str] = Counter()
    for state in ("completed", "failed", "cancelled", "skipped", "abandoned", "handed_off"):
        for record in report.get(state, []):
            per_request[record["request"]] += 1
    recorded = sum(per_request.values())
    if recorded != report["total"]:
        outcome.problems.append(f"{recorded} records for a total of {report['total']}")
    lost = report.get("lost", [])
    lost_pids = {entry["pid"] for entry in lost}
    counts["lost"] += sum(entry["tasks_active"] or 0 for entry in lost)
    if outcome.victim is not None and outcome.victim not in lost_pids:
        outcome.problems.append(f"the killed worker {outcome.victim} is not in lost")
    for rid, pid in outcome.answered.items():
        found = per_request.pop(f"POST /work/{rid}", 0)
        if found > TASKS_PER_REQUEST:
            counts["duplicated"] += found - TASKS_PER_REQUEST
        counts["in reports"] += min(found, TASKS_PER_REQUEST)
        if found < TASKS_PER_REQUEST:
            missing = "of lost workers" if pid in lost_pids else "unaccounted"
            counts[missing] += TASKS_PER_REQUEST - found
    if counts["duplicated"] or counts["unaccounted"]:
        outcome.problems.append(
            f"{counts['duplicated']} duplicated, {counts['unaccounted']} unaccounted tasks"
        )


COLUMNS = (
    "runs", "requests", "tasks", "in reports", "of lost workers", "lost", "killed",
    "duplicated", "unaccounted", "late exits", "wrong status", "tracebacks",
)  # fmt: skip


def table(outcomes: list[Outcome]) -> str:
    rows = [["fault", *COLUMNS, "worst exit"]]
    groups = {fault: [o for o in outcomes if o.plan.fault == fault] for fault in FAULTS}
    groups["all"] = outcomes
    for fault, group in groups.items():
        if not group:
            continue
        total: Counter[str] = Counter()
        for outcome in group:
            total.update(outcome.counts)
        total["runs"] = len(group)
        afters = [o.exit_after_deadline for o in group if o.exit_after_deadline is not None]
        worst = f"{max(afters):+.2f} s" if afters else "-"
        rows.append([fault, *(str(total[c]) for c in COLUMNS), worst])
    return aligned(rows)


async def run_suite(seeds: list[int], *, verbose: bool = False) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="trio-background-chaos-") as folder:
        for seed in seeds:
            outcome = await run_one(Plan.of(seed), Path(folder))
            outcomes.append(outcome)
            if verbose:
                plan = outcome.plan
                status = "; ".join(outcome.problems) or "ok"
                after = outcome.exit_after_deadline
                print(
                    f"seed {seed:3d} {plan.fault:13s} {plan.mode:6s} drain {plan.drain_timeout:g} "
                    f"delay {plan.shutdown_delay:g} workers {plan.workers}: "
                    f"{outcome.counts['requests']} requests, exit {outcome.exit_code}"
                    + ("" if after is None else f" at deadline {after:+.2f} s")
                    + f": {status}",
                    flush=True,
                )
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="how many seeded runs (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    args = parser.parse_args()
    seeds = list(range(args.seed, args.seed + args.runs))
    outcomes = trio.run(lambda: run_suite(seeds, verbose=True))
    print()
    print(f"python -m bench.chaos --runs {args.runs} --seed {args.seed}")
    print(table(outcomes))
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
