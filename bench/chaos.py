"""Fault suite: seeded faults against real server processes under load, and a checker.

``make chaos`` (``python -m bench.chaos --runs 50``) runs each seed once.
A seed picks one fault of :data:`FAULTS`; the first seven are in-process
faults, the last four durable ones.

An in-process run starts ``python -m trio_background bench.apps.chaos_app:app``,
drives it with bounded load (``CONCURRENCY`` clients, at most
``MAX_REQUESTS`` requests, each adding two tasks), applies one fault, and
checks the history:

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

A durable run starts a real ``redis-server`` (``appendonly yes``), a
delaying TCP proxy in front of it (``tests/durable/slow_redis.py``), two
streaQ workers (``python -m trio_background.streaq worker
bench.apps.chaos_durable_app:backend``, on Redis itself) and the web process
``python -m trio_background bench.apps.chaos_durable_app:app`` (on the
proxy); each request hands one durable task to streaQ and adds one
in-process task. The fault: Redis SIGKILLed and restarted on its port, Redis
made slow (the proxy holds its replies back, longer or shorter than the
backend's ``hand_off_timeout``), a streaQ worker SIGKILLed and another
started, or the web process SIGKILLed. The checker adds:

- every request answered 2xx has its durable task run at least once by a
  worker (the workers get a bounded time to catch up once the web process
  exited) and its two records (the hand-off and the in-process task) in the
  web report, or counted as ``killed`` when the web process was SIGKILLed;
  "durable never run" must be 0;
- no request answered 503 has a durable task that ever runs: the checker
  waits the backend's ``hold`` after the last 503 (a stored task nobody
  released runs when its hold ends) before it concludes; "503 that ran"
  must be 0;
- each streaQ worker still running at the end exits by its drain deadline
  + 1 s after SIGTERM, with status 0 and its report written.

It prints one table row per fault and exits 1 if any run broke a rule.
Each run's plan comes from its seed: the same seeds apply the same faults
at the same points of the load.
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
import shutil
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
DURABLE_APP = "bench.apps.chaos_durable_app"
IN_PROCESS_FAULTS = (
    "sigterm",
    "second_signal",
    "sigterm_storm",
    "sigint_storm",
    "kill_worker",
    "kill_web",
    "report_dir",
)
DURABLE_FAULTS = (
    "kill_redis",
    "slow_redis",
    "kill_streaq_worker",
    "kill_web_durable",
)
FAULTS = IN_PROCESS_FAULTS + DURABLE_FAULTS
KILLS_WEB = ("kill_web", "kill_web_durable")
TASKS_PER_REQUEST = 2
CONCURRENCY = 16
MAX_REQUESTS = 1500
EXIT_BOUND = 1.0  # the design's: exit by the deadline + 1 s
MIN_ANSWERED = 20  # requests answered before the fault
HANG_LIMIT = 30.0  # a process still alive this long after its deadline is killed
STREAQ_WORKERS = 2
STREAQ_DRAIN = 2.0  # the streaQ workers' --drain-timeout
# The durable app's windows (bench/apps/chaos_durable_app.py).
HOLD = 6.0
IDLE_TIMEOUT = 2.0
# streaQ moves due held tasks to the stream every 0.5 s; then a worker runs one.
SCHEDULER_SLACK = 1.5
# How long the workers get to run every acknowledged durable task once the
# web process exited: a task whose release Redis never confirmed runs when
# its hold ends, one a killed worker had claimed after idle_timeout.
DURABLE_WAIT = HOLD + IDLE_TIMEOUT + 10.0


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
        if fault == "kill_worker":
            workers = 2
        elif fault in KILLS_WEB:
            workers = 1
        else:
            workers = rng.choice((1, 2))
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

    @property
    def durable(self) -> bool:
        return self.fault in DURABLE_FAULTS


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
    refused: set[int] = dataclasses.field(default_factory=set[int])  # rids answered 503
    runs: Counter[int] = dataclasses.field(default_factory=Counter[int])  # durable runs by rid
    workers: list[Child] = dataclasses.field(default_factory=list["Child"])  # streaQ workers
    worker_exits: list[float] = dataclasses.field(default_factory=list[float])  # after deadline


def _exit_time(pidfd: int) -> float:
    """Block until the process of ``pidfd`` has exited; when that was (monotonic)."""
    select.select([pidfd], [], [])
    return time.monotonic()


@dataclasses.dataclass(eq=False)
class Child:
    """A process of a run: its stderr, and when it exited (a thread waits on its pidfd)."""

    name: str
    process: trio.Process
    chunks: list[str] = dataclasses.field(default_factory=list[str])
    exited: trio.Event = dataclasses.field(default_factory=trio.Event)
    exited_at: float | None = None
    signalled_at: float | None = None  # when this program sent SIGTERM, for the bound
    deadline: float | None = None
    report_path: Path | None = None

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    @property
    def pid(self) -> int:
        return self.process.pid


async def spawn(
    nursery: trio.Nursery,
    name: str,
    args: list[str],
    *,
    ready: str,
    count: int = 1,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``python ARGS``; return once ``ready`` appeared ``count`` times on its stderr."""
    process = await trio.lowlevel.open_process(
        [sys.executable, *args], stderr=subprocess.PIPE, cwd=ROOT, env=env
    )
    child = Child(name, process)
    pidfd = os.pidfd_open(process.pid)
    is_ready = trio.Event()

    async def read_output() -> None:
        assert process.stderr is not None
        seen = ""
        while chunk := await process.stderr.receive_some():
            text = chunk.decode(errors="replace")
            child.chunks.append(text)
            if not is_ready.is_set():
                seen += text
                if len(re.findall(ready, seen)) >= count:
                    is_ready.set()

    async def wait_exit() -> None:
        child.exited_at = await trio.to_thread.run_sync(_exit_time, pidfd, abandon_on_cancel=True)
        os.close(pidfd)
        child.exited.set()
        is_ready.set()

    nursery.start_soon(read_output)
    nursery.start_soon(wait_exit)
    with trio.move_on_after(30):
        await is_ready.wait()
    if not is_ready.is_set() or child.exited.is_set():
        process.kill()
        raise RuntimeError(f"{name} did not start:\n{child.output[-3000:]}")
    return child


async def finish(child: Child) -> int:
    """Wait for ``child`` to exit (killing it past ``HANG_LIMIT``); its status."""
    with trio.move_on_after(HANG_LIMIT + 10):
        await child.exited.wait()
    if child.process.returncode is None and not child.exited.is_set():
        child.process.kill()
    return await child.process.wait()


def _send(child: Child, signum: int) -> float:
    sent = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signum)
    return sent


@dataclasses.dataclass
class Load:
    """Bounded load on a server: which requests were answered 2xx (by which pid), 503."""

    plan: Plan
    url: str
    answered: dict[int, int] = dataclasses.field(default_factory=dict[int, int])
    refused: set[int] = dataclasses.field(default_factory=set[int])
    last_refused_at: float = 0.0  # monotonic
    faulted: trio.Event = dataclasses.field(default_factory=trio.Event)
    under_way: trio.Event = dataclasses.field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        first = self.plan.seed * 1_000_000
        self._rids = iter(range(first, first + MAX_REQUESTS))

    async def client_loop(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            for rid in self._rids:
                try:
                    response = await client.post(f"/work/{rid}")
                except httpx.ConnectError:
                    if self.faulted.is_set():
                        return  # not accepting any more
                    await trio.sleep(0.01)  # a worker not listening yet
                    continue
                except httpx.HTTPError:
                    continue  # cut, or the process died: not acknowledged
                if 200 <= response.status_code < 300:
                    self.answered[rid] = response.json()["pid"]
                    if len(self.answered) >= MIN_ANSWERED:
                        self.under_way.set()
                elif response.status_code == 503:
                    self.refused.add(rid)
                    self.last_refused_at = time.monotonic()

    async def until_under_way(self) -> None:
        await trio.sleep(self.plan.warmup)
        with trio.move_on_after(10):  # until the load is really under way
            await self.under_way.wait()


def _server_args(plan: Plan, app: str, report_path: Path) -> list[str]:
    return [
        "-m", "trio_background", app, "--bind", "127.0.0.1:0",
        "--mode", plan.mode, "--drain-timeout", str(plan.drain_timeout),
        "--shutdown-delay", str(plan.shutdown_delay), "--workers", str(plan.workers),
        "--report-json", str(report_path),
        "--log-level", os.environ.get("CHAOS_LOG_LEVEL", "warning"),
    ]  # fmt: skip


def _stop_in(plan: Plan) -> float:
    """Seconds from SIGTERM to the server's deadline."""
    return plan.shutdown_delay + (plan.drain_timeout if plan.mode == "drain" else 0.0)


def _url(child: Child) -> str:
    return re.search(r"Running on (http://\S+) ", child.output).group(1)  # type: ignore[union-attr]


def _read_report(path: Path) -> dict[str, Any] | None:
    if path.is_file():
        with contextlib.suppress(ValueError):
            return json_load(path)
    return None


async def run_one(plan: Plan, folder: Path) -> Outcome:
    """Run ``plan`` once against fresh processes; check the history."""
    if plan.durable:
        return await run_durable(plan, folder)
    report_path = folder / f"report-{plan.seed}.json"
    async with trio.open_nursery() as nursery:
        web = await spawn(
            nursery, "the server", _server_args(plan, APP, report_path),
            ready=r"Running on http://\S+ ", count=plan.workers,
        )  # fmt: skip
        load = Load(plan, _url(web))
        async with trio.open_nursery() as clients:
            for _ in range(CONCURRENCY):
                clients.start_soon(load.client_loop)
            await load.until_under_way()
            load.faulted.set()
            deadline, victim = await _apply(plan, web, load.answered, report_path)
            exit_code = await finish(web)
            clients.cancel_scope.cancel()
    assert web.exited_at is not None
    after = None if plan.fault in KILLS_WEB else web.exited_at - deadline
    report = _read_report(report_path)
    outcome = Outcome(plan, load.answered, exit_code, after, report, web.output, victim)
    check(outcome)
    return outcome


async def _apply(
    plan: Plan, web: Child, answered: dict[int, int], report_path: Path
) -> tuple[float, int | None]:
    """Apply the fault; the process's deadline (monotonic) and the worker killed, if any."""
    rng = random.Random(plan.seed + 1)
    stop_in = _stop_in(plan)
    process = web.process

    def send(signum: int) -> float:
        return _send(web, signum)

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
            if process.returncode is not None or web.exited.is_set():
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


# -- durable runs -------------------------------------------------------------


async def run_durable(plan: Plan, folder: Path) -> Outcome:
    """Run a durable ``plan``: Redis, its proxy, streaQ workers and the web process."""
    # Imported here: the in-process runs need neither streaQ nor the tests' helpers.
    from tests.durable.slow_redis import SlowProxy
    from tests.redis_fixture import RedisServer

    if shutil.which("redis-server") is None:
        raise RuntimeError(
            f"seed {plan.seed} ({plan.fault}) needs Debian's redis-server: "
            "apt-get install redis-server (or ./scripts/ensure-redis as root)"
        )
    run_dir = folder / f"durable-{plan.seed}"
    (run_dir / "redis").mkdir(parents=True)
    marks = run_dir / "marks"
    report_path = run_dir / "web-report.json"
    redis = RedisServer(run_dir / "redis", appendonly=True)
    await trio.to_thread.run_sync(redis.start)
    proxy = SlowProxy(redis.port)
    workers: list[Child] = []
    web: Child | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)

            def env(redis_url: str) -> dict[str, str]:
                return {**os.environ, "CHAOS_REDIS_URL": redis_url, "CHAOS_MARKS": str(marks)}

            async def start_worker() -> Child:
                number = len(workers)
                worker_report = run_dir / f"worker-{number}.json"
                args = [
                    "-m", "trio_background.streaq", "worker", f"{DURABLE_APP}:backend",
                    "--drain-timeout", str(STREAQ_DRAIN), "--report-json", str(worker_report),
                    "--log-level", "info",
                ]  # fmt: skip
                worker = await spawn(
                    nursery,
                    f"streaQ worker {number}",
                    args,
                    ready=r"streaq worker \w+ ready",
                    env=env(redis.url),
                )
                worker.report_path = worker_report
                workers.append(worker)
                return worker

            for _ in range(STREAQ_WORKERS):
                await start_worker()
            web = await spawn(
                nursery, "the server", _server_args(plan, f"{DURABLE_APP}:app", report_path),
                ready=r"Running on http://\S+ ", count=plan.workers, env=env(proxy.url),
            )  # fmt: skip
            load = Load(plan, _url(web))
            rng = random.Random(plan.seed + 1)
            deadline = float("inf")
            victim: int | None = None
            async with trio.open_nursery() as clients:
                for _ in range(CONCURRENCY):
                    clients.start_soon(load.client_loop)
                await load.until_under_way()
                if plan.fault == "kill_redis":
                    await trio.to_thread.run_sync(redis.stop)  # SIGKILL
                    await trio.sleep(2 * plan.pause)
                    await trio.to_thread.run_sync(redis.start)  # on its port, from its AOF
                elif plan.fault == "slow_redis":
                    # Replies late by less or more than hand_off_timeout: 2xx or 503.
                    proxy.delay = rng.uniform(0.3, 2.5)
                    await trio.sleep(rng.uniform(1.0, 2.0))
                    proxy.delay = 0.0
                elif plan.fault == "kill_streaq_worker":
                    killed = rng.choice(workers)
                    victim = killed.pid
                    _send(killed, signal.SIGKILL)
                    await trio.sleep(plan.pause)
                    await start_worker()
                if plan.fault == "kill_web_durable":
                    load.faulted.set()
                    _send(web, signal.SIGKILL)
                else:
                    await trio.sleep(plan.warmup)  # load on the mended system
                    load.faulted.set()
                    deadline = _send(web, signal.SIGTERM) + _stop_in(plan)
                exit_code = await finish(web)
                clients.cancel_scope.cancel()
            assert web.exited_at is not None
            after = None if plan.fault in KILLS_WEB else web.exited_at - deadline
            # The workers catch up: every acknowledged task runs, within a bound.
            runs: Counter[int] = Counter()
            with trio.move_on_after(DURABLE_WAIT):
                while True:
                    runs = _read_marks(marks)
                    if all(rid in runs for rid in load.answered):
                        break
                    await trio.sleep(0.2)
            # A 503's task never runs: wait out the hold of the last one first.
            if load.refused:
                await trio.sleep_until(
                    trio.current_time()
                    + max(0.0, load.last_refused_at + HOLD + SCHEDULER_SLACK - time.monotonic())
                )
            runs = _read_marks(marks)
            for worker in workers:
                if not worker.exited.is_set():
                    worker.signalled_at = _send(worker, signal.SIGTERM)
                    worker.deadline = worker.signalled_at + STREAQ_DRAIN
            for worker in workers:
                await finish(worker)
            nursery.cancel_scope.cancel()
    finally:
        for child in [*workers, *([web] if web is not None else [])]:
            if child.process.returncode is None:
                child.process.kill()
        await trio.to_thread.run_sync(redis.stop)
    outcome = Outcome(
        plan, load.answered, exit_code, after, _read_report(report_path), web.output, victim,
        refused=load.refused, runs=runs, workers=workers,
    )  # fmt: skip
    check(outcome)
    check_durable(outcome)
    return outcome


def _read_marks(path: Path) -> Counter[int]:
    """How many times each request's durable task ran (the lines the workers appended)."""
    if not path.is_file():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)


def json_load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# A log record's first line: the CLI's format, or Hypercorn's.
_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\[\d{4}-)", re.MULTILINE)
# The records of a durable run that carry a traceback by design: the error
# a durable 503 logs (ours, with what kept Redis from storing the tasks), and
# coredis's own ERROR when the hand-off timeout cuts a new connection's
# handshake (a slow Redis: the same 503, told by Redis's client library).
EXPECTED_DURABLE_TRACEBACKS = (
    "trio_background: could not hand off",
    "coredis: Connection attempt failed unexpectedly!",
)


WORKER_EXPECTED_TRACEBACKS = ("coredis: Connection attempt failed unexpectedly!",)


def unexpected_tracebacks(output: str, expected: tuple[str, ...] = ()) -> list[str]:
    """The first lines of the log records on stderr that carry a traceback.

    But those whose first line contains one of ``expected``.
    """
    starts = [m.start() for m in _RECORD.finditer(output)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    records = [output[a:b] for a, b in zip(starts, [*starts[1:], len(output)], strict=True)]
    heads = [record.partition("\n")[0] for record in records if "Traceback" in record]
    return [head[:300] for head in heads if not any(text in head for text in expected)]


def check(outcome: Outcome) -> None:
    """Fill ``outcome.counts`` and ``outcome.problems`` from the history."""
    plan, report, counts = outcome.plan, outcome.report, outcome.counts
    counts["requests"] = len(outcome.answered)
    counts["tasks"] = TASKS_PER_REQUEST * len(outcome.answered)
    expected_exit = {
        "kill_web": -signal.SIGKILL,
        "kill_web_durable": -signal.SIGKILL,
        "report_dir": 1,
        "kill_worker": 1,
    }.get(plan.fault, 0)
    if plan.fault == "kill_worker" and outcome.victim is None:
        expected_exit = 0  # no worker had answered yet: nothing was killed
    if outcome.exit_code != expected_exit:
        counts["wrong status"] += 1
        outcome.problems.append(f"exit status {outcome.exit_code}, expected {expected_exit}")
    after = outcome.exit_after_deadline
    if after is not None and after > EXIT_BOUND:
        counts["late exits"] += 1
        outcome.problems.append(f"exited {after:.2f} s after the deadline")
    expected = EXPECTED_DURABLE_TRACEBACKS if plan.durable else ()
    if tracebacks := unexpected_tracebacks(outcome.output, expected):
        counts["tracebacks"] += 1
        outcome.problems.append(f"a traceback on stderr, in: {tracebacks[0]}")
    if plan.fault in (*KILLS_WEB, "report_dir"):
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
    victim = outcome.victim if plan.fault == "kill_worker" else None
    if victim is not None and victim not in lost_pids:
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


def check_durable(outcome: Outcome) -> None:
    """Add the durable rules to ``outcome``: what ran, what did not, the workers' exits."""
    report, counts, runs = outcome.report, outcome.counts, outcome.runs
    counts["durable requests"] = len(outcome.answered) + len(outcome.refused)
    counts["2xx"] = len(outcome.answered)
    counts["503"] = len(outcome.refused)
    ran = [rid for rid in outcome.answered if runs[rid] >= 1]
    counts["durable run"] = len(ran)
    counts["durable never run"] = len(outcome.answered) - len(ran)
    counts["durable reruns"] = sum(runs[rid] - 1 for rid in ran)
    counts["503 that ran"] = sum(1 for rid in outcome.refused if runs[rid])
    if counts["durable never run"]:
        outcome.problems.append(
            f"{counts['durable never run']} durable tasks of 2xx requests never ran"
        )
    if counts["503 that ran"]:
        outcome.problems.append(f"{counts['503 that ran']} durable tasks of 503 requests ran")
    if report is not None:
        handed = {record["request"] for record in report.get("handed_off", [])}
        missing = sum(f"POST /work/{rid}" not in handed for rid in outcome.answered)
        if missing:
            outcome.problems.append(f"{missing} 2xx requests without a handed_off record")
    for worker in outcome.workers:
        status = worker.process.returncode
        if worker.deadline is None:  # SIGKILLed by the fault
            expected = -signal.SIGKILL
        else:
            expected = 0
            assert worker.exited_at is not None
            after = worker.exited_at - worker.deadline
            outcome.worker_exits.append(after)
            if after > EXIT_BOUND:
                counts["late exits"] += 1
                outcome.problems.append(f"{worker.name} exited {after:.2f} s after its deadline")
            if worker.report_path is None or _read_report(worker.report_path) is None:
                outcome.problems.append(f"{worker.name} wrote no report")
        if status != expected:
            counts["wrong status"] += 1
            outcome.problems.append(f"{worker.name} exit status {status}, expected {expected}")
        # A worker riding out a Redis outage: coredis logs each failed
        # connection attempt with its traceback (the worker logs the outage).
        if tracebacks := unexpected_tracebacks(worker.output, WORKER_EXPECTED_TRACEBACKS):
            counts["tracebacks"] += 1
            outcome.problems.append(f"a traceback on {worker.name}'s stderr, in: {tracebacks[0]}")


COLUMNS = (
    "runs", "requests", "tasks", "in reports", "of lost workers", "lost", "killed",
    "duplicated", "unaccounted", "late exits", "wrong status", "tracebacks",
    "durable requests", "2xx", "503", "durable run", "durable never run", "503 that ran",
    "durable reruns",
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
        afters += [after for o in group for after in o.worker_exits]
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
                    f"seed {seed:3d} {plan.fault:18s} {plan.mode:6s} drain {plan.drain_timeout:g} "
                    f"delay {plan.shutdown_delay:g} workers {plan.workers}: "
                    f"{outcome.counts['requests']} requests, exit {outcome.exit_code}"
                    + ("" if after is None else f" at deadline {after:+.2f} s")
                    + (
                        f", {outcome.counts['503']} refused (503), durable tasks run "
                        f"{outcome.counts['durable run']}/{outcome.counts['2xx']}, "
                        f"503 that ran {outcome.counts['503 that ran']}"
                        if plan.durable
                        else ""
                    )
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
