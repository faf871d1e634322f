"""DESIGN.md "Shutdown": one deadline, every task accounted for, stable reports.

Everything here runs under trio's MockClock (``autojump_clock``): an hour of
task time costs nothing, and times in reports are exact.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from fastapi import FastAPI

from trio_background import (
    BackgroundTasks,
    BackgroundTasksMiddleware,
    ShutdownReport,
    Supervisor,
    TaskState,
)
from trio_background.fastapi import BackgroundTasks as BackgroundTasksDependency
from trio_background.testing import open_client


async def sleeper(seconds: float) -> None:
    await trio.sleep(seconds)


def batch_of(*seconds: float) -> BackgroundTasks:
    batch = BackgroundTasks()
    for s in seconds:
        batch.add_task(sleeper, s)
    return batch


async def test_drain_completes_within_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(mode="drain", drain_timeout=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch_of(5, 5))
        nursery.start_soon(supervisor.run, batch_of(8))
        await trio.testing.wait_all_tasks_blocked()
        report = await supervisor.shutdown()
    assert trio.current_time() == 10
    assert report.all_completed
    assert (report.total, report.count("completed")) == (3, 3)
    assert report.mode == "drain"
    assert (report.shutdown_started_at, report.deadline) == (0, 30)


async def test_drain_deadline_cancels_the_running_and_skips_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(drain_timeout=30)
    batch = batch_of(10, 3600, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch)
        await trio.testing.wait_all_tasks_blocked()
        report = await supervisor.shutdown()
    assert trio.current_time() == 30
    assert [t.state for t in batch.tasks] == [
        TaskState.COMPLETED,
        TaskState.CANCELLED,
        TaskState.SKIPPED,
    ]
    (cancelled,) = report.cancelled
    assert (cancelled.id, cancelled.started_at, cancelled.ended_at) == ("1.1", 10, 30)
    (skipped,) = report.skipped
    assert skipped.reason == "the shutdown deadline passed before it started"
    assert skipped.started_at is None


async def test_cancel_mode_cuts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(mode="cancel")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch_of(3600, 1))
        await trio.sleep(7)
        report = await supervisor.shutdown()
    assert trio.current_time() == 7
    assert (report.count("cancelled"), report.count("skipped")) == (1, 1)
    assert report.mode == "cancel"
    assert report.drain_timeout is None


async def test_stuck_sync_task_is_abandoned_by_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    unblock = threading.Event()
    exited = threading.Event()
    started = trio.Event()

    def stuck() -> None:
        try:
            trio.from_thread.run_sync(started.set)
            unblock.wait()
        finally:
            exited.set()

    supervisor = Supervisor(drain_timeout=5)
    batch = BackgroundTasks()
    task = batch.add_task(stuck)
    batch.add_task(sleeper, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch)
        await started.wait()
        assert task.state is TaskState.RUNNING
        supervisor.begin_shutdown()
        # Under MockClock virtual time follows real time while a thread runs
        # (see the testing docs): jump to the deadline instead of waiting 5 s.
        autojump_clock.jump(5)
        await supervisor.wait_idle()
        report = supervisor.close()
        assert trio.current_time() == 5
        assert task.state is TaskState.ABANDONED
        assert not exited.is_set()  # shutdown did not wait for the thread
        unblock.set()
    await trio.to_thread.run_sync(exited.wait)
    assert (report.count("abandoned"), report.count("skipped")) == (1, 1)
    assert report.abandoned[0].reason == (
        "cancelled while its thread was running; the thread was left to finish on its own"
    )


async def test_sync_task_polling_check_cancelled_stops_soon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped = threading.Event()
    polls: list[int] = []

    def polite() -> None:
        try:
            while True:
                polls.append(1)
                trio.from_thread.check_cancelled()
        finally:
            stopped.set()

    supervisor = Supervisor(mode="cancel")
    batch = BackgroundTasks()
    batch.add_task(polite)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch)
        while not polls:
            await trio.lowlevel.checkpoint()
        report = await supervisor.shutdown()
    await trio.to_thread.run_sync(stopped.wait)
    assert report.count("abandoned") == 1


async def test_sync_task_waiting_for_a_thread_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    unblock = threading.Event()
    started = trio.Event()

    def blocker() -> None:
        trio.from_thread.run_sync(started.set)
        unblock.wait()

    supervisor = Supervisor(mode="cancel", thread_limit=1)
    first, second = BackgroundTasks(), BackgroundTasks()
    first.add_task(blocker)
    waiting = second.add_task(blocker)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, first)
        await started.wait()
        nursery.start_soon(supervisor.run, second)
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.limiter.statistics().tasks_waiting == 1
        report = await supervisor.shutdown()
        unblock.set()
    assert waiting.state is TaskState.SKIPPED
    assert waiting.reason == "cancelled before its thread started"
    assert (report.count("abandoned"), report.count("skipped")) == (1, 1)


def hour_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, drain_timeout=30)

    @app.post("/work/{seconds}")
    async def work(seconds: float, background_tasks: BackgroundTasksDependency) -> None:
        background_tasks.add_task(sleeper, seconds)

    return app


async def test_requests_arriving_during_the_drain_share_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_client(hour_app()) as client:
        await client.post("/work/3600")
        client.supervisor.begin_shutdown()
        await trio.sleep(10)
        await client.post("/work/3600")  # in flight when shutdown began
        await client.post("/work/5")
        report = await client.shutdown()
    assert [(r.id, r.started_at, r.ended_at) for r in report.cancelled] == [
        ("1.0", 0, 30),
        ("2.0", 10, 30),
    ]
    assert [(r.id, r.ended_at) for r in report.completed] == [("3.0", 15)]


async def test_task_adding_tasks_during_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(drain_timeout=30)
    batch = BackgroundTasks()

    async def spawner() -> None:
        await trio.sleep(10)
        batch.add_task(sleeper, 5)  # fits before the deadline
        batch.add_task(sleeper, 60)  # is cut by it
        batch.add_task(sleeper, 1)  # never starts

    batch.add_task(spawner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch)
        await trio.testing.wait_all_tasks_blocked()
        report = await supervisor.shutdown()
    assert [t.state for t in batch.tasks] == [
        TaskState.COMPLETED,
        TaskState.COMPLETED,
        TaskState.CANCELLED,
        TaskState.SKIPPED,
    ]
    assert report.total == 4
    with pytest.raises(RuntimeError, match=r"^cannot add .*sleeper to this batch: its batch has"):
        batch.add_task(sleeper, 1)


async def test_second_shutdown_call_can_only_shorten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(drain_timeout=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch_of(3600))
        await trio.testing.wait_all_tasks_blocked()
        supervisor.begin_shutdown()
        await trio.sleep(5)
        supervisor.begin_shutdown(drain_timeout=100)  # later: ignored
        supervisor.begin_shutdown(mode="cancel")  # sooner: now
        report = await supervisor.shutdown()
    assert trio.current_time() == 5
    assert report.mode == "cancel"
    assert report.cancelled[0].ended_at == 5


async def test_report_is_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(mode="cancel")
    with caplog.at_level(logging.INFO, logger="trio_background"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run, batch_of(3600, 1))
            await trio.testing.wait_all_tasks_blocked()
            first = await supervisor.shutdown()
        assert supervisor.close() is first
    summaries = [r for r in caplog.records if "total" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in summaries] == [
        (
            logging.WARNING,
            "background tasks (cancel): 2 total: 0 completed, 0 failed, 1 cancelled, "
            "1 skipped, 0 abandoned; not completed: 1.0 sleeper (cancelled), 1.1 sleeper (skipped)",
        )
    ]


async def test_all_completed_logs_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor()
    with caplog.at_level(logging.INFO, logger="trio_background"):
        await supervisor.run(batch_of(1))
        await supervisor.shutdown()
    (summary,) = [r for r in caplog.records if "total" in r.getMessage()]
    assert summary.levelno == logging.INFO
    assert summary.getMessage() == (
        "background tasks (drain, timeout 30s): 1 total: 1 completed, 0 failed, "
        "0 cancelled, 0 skipped, 0 abandoned"
    )


async def test_log_names_at_most_twenty_tasks(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(mode="cancel")
    with caplog.at_level(logging.WARNING, logger="trio_background"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run, batch_of(*[60] * 25))
            await trio.testing.wait_all_tasks_blocked()
            await supervisor.shutdown()
    (summary,) = caplog.records
    assert summary.getMessage().endswith("1.19 sleeper (skipped), and 5 more")


async def run_scenario(
    requests: list[list[tuple[str, float]]],
    *,
    shutdown_at: float,
    mode: Any,
    drain_timeout: float,
    keep_records: int = 1000,
) -> tuple[ShutdownReport, list[BackgroundTasks]]:
    """Requests arrive one a second; each adds its tasks; shutdown at ``shutdown_at``."""
    supervisor = Supervisor(mode=mode, drain_timeout=drain_timeout, keep_records=keep_records)
    batches: list[BackgroundTasks] = []

    def fail() -> None:
        raise ValueError("boom")

    async def afail(seconds: float) -> None:
        await trio.sleep(seconds)
        raise KeyError("late")

    async with trio.open_nursery() as nursery:

        async def requests_arrive() -> None:
            for tasks in requests:
                batch = BackgroundTasks()
                for kind, seconds in tasks:
                    if kind == "async":
                        batch.add_task(sleeper, seconds)
                    elif kind == "sync":
                        batch.add_task(len, "instant")
                    elif kind == "fail":
                        batch.add_task(fail)
                    else:
                        batch.add_task(afail, seconds)
                batches.append(batch)
                nursery.start_soon(partial(supervisor.run, batch, request=f"POST /r{len(batches)}"))
                await trio.sleep(1)

        nursery.start_soon(requests_arrive)
        await trio.sleep(shutdown_at)
        supervisor.begin_shutdown()
    return await supervisor.shutdown(), batches


async def test_same_scenario_gives_byte_identical_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scenario = [
        [("async", 5.0), ("sync", 0.0), ("fail", 0.0), ("async", 100.0)],
        [("afail", 2.0), ("async", 1.0)],
        [("sync", 0.0), ("async", 40.0), ("async", 1.0)],
    ]
    first, _ = await run_scenario(scenario, shutdown_at=3, mode="drain", drain_timeout=30)
    second, _ = await run_scenario(scenario, shutdown_at=3, mode="drain", drain_timeout=30)
    assert first.to_json() == second.to_json()
    assert first.counts == {
        "completed": 4,
        "failed": 2,
        "cancelled": 2,
        "skipped": 1,
        "abandoned": 0,
        "handed_off": 0,
    }


async def test_a_second_signal_after_the_report_changes_nothing() -> None:
    """A drain that ended at once (nothing open), then the second signal: no error."""
    supervisor = Supervisor()
    supervisor.begin_shutdown(mode="drain", drain_timeout=30, cause="signal")
    report = supervisor.close()
    supervisor.begin_shutdown(mode="cancel")  # the escalation, arriving late
    assert supervisor.close() is report
    assert report.mode == "drain"
