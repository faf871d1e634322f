"""``python -m trio_background.streaq worker``: whole worker processes on a real Redis.

Real time (processes cannot share a MockClock): every wait is for an event
(a line the worker logs, a result streaQ publishes) under a generous bound.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    pytest.skip("streaQ (the durable backend) needs Python 3.11+", allow_module_level=True)

import trio

from tests.durable import durable_app
from tests.durable.conftest import Spawn
from tests.redis_fixture import RedisServer
from tests.test_cli import Server
from trio_background import BackgroundTask
from trio_background.streaq import StreaqBackend
from trio_background.streaq._cli import main

APP = "tests.durable.durable_app:backend"


@pytest.fixture
async def client(durable_env: Path) -> AsyncIterator[StreaqBackend]:
    """The test's side of the queue: hands tasks off and reads results."""
    async with durable_app.make_backend() as backend:
        yield backend


async def start_worker(spawn: Spawn, *options: str) -> Server:
    worker = await spawn("-m", "trio_background.streaq", "worker", APP, *options)
    await worker.wait_for(r"streaq worker \w+ ready")
    return worker


async def stop(worker: Server) -> None:
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0, worker.output


def marks(folder: Path, name: str) -> list[str]:
    return (folder / name).read_text().splitlines()


async def test_a_worker_runs_handed_off_tasks_and_drains_on_sigterm(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    report_path = durable_env / "report.json"
    worker = await start_worker(
        spawn,
        "--concurrency", "2", "--drain-timeout", "20", "--report-json", str(report_path)
    )  # fmt: skip
    ids = await client.hand_off(
        [
            BackgroundTask(durable_app.mark, "a"),
            BackgroundTask(durable_app.mark_sync, "b"),
            BackgroundTask(durable_app.take_a_second, "c"),
            BackgroundTask(durable_app.refuse, "d"),
        ]
    )
    with trio.fail_after(30):
        assert (await client.result(ids[0])).result == "a"
        assert (await client.result(ids[1])).result == "b"
        assert repr((await client.result(ids[3])).exception) == "ValueError('no d')"
    await worker.wait_for("take_a_second c started")
    await stop(worker)  # c is running: the drain lets it finish
    pid = worker.process.pid
    assert [marks(durable_env, n) for n in "abc"] == [[f"done {pid}"]] * 3
    report = json.loads(report_path.read_text())
    assert (report["mode"], report["drain_timeout"]) == ("drain", 20)
    assert (report["counts"]["completed"], report["counts"]["failed"], report["total"]) == (3, 1, 4)
    assert sorted((r["name"], r["engine_id"]) for r in report["completed"]) == sorted(
        (f"tests.durable.durable_app.{f}", i)
        for f, i in zip(["mark", "mark_sync", "take_a_second"], ids, strict=False)
    )
    [failed] = report["failed"]
    assert (failed["engine_id"], failed["error"]) == (ids[3], "ValueError: no d")
    assert re.search(
        r"WARNING trio_background\.streaq: streaq worker \w+: background tasks \(drain, timeout "
        r"20s, on signal\): 4 total: 3 completed, 1 failed, .*; not completed: "
        rf"tests\.durable\.durable_app\.refuse {ids[3]} \(failed\)",
        worker.output,
    ), worker.output


async def test_a_task_whose_worker_is_killed_is_finished_by_another(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    first = await start_worker(spawn)
    [task_id] = await client.hand_off([BackgroundTask(durable_app.hang_once, "k")])
    await first.wait_for("hang_once k hanging")
    first.process.kill()
    await first.finish()
    second = await start_worker(spawn)
    with trio.fail_after(30):  # after idle_timeout (2 s) the second worker claims it
        result = await client.result(task_id)
    await stop(second)
    assert (result.success, result.tries) == (True, 2)
    assert marks(durable_env, "k") == [f"done {second.process.pid}"]


async def test_a_task_cut_by_the_drain_deadline_goes_back_to_the_queue(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    report_path = durable_env / "report.json"
    first = await start_worker(spawn, "--drain-timeout", "0.5", "--report-json", str(report_path))
    [task_id] = await client.hand_off([BackgroundTask(durable_app.hang_once, "d")])
    await first.wait_for("hang_once d hanging")
    await stop(first)
    report = json.loads(report_path.read_text())
    assert report["counts"]["cancelled"] == report["total"] == 1
    [cut] = report["cancelled"]
    assert (cut["name"], cut["engine_id"], cut["request"]) == (
        "tests.durable.durable_app.hang_once",
        task_id,
        f"streaq queue {client.queue_name}",
    )
    assert cut["reason"] == (
        "cut by the drain deadline; streaQ puts it back in the queue for another worker"
    )
    assert re.search(
        r"WARNING trio_background\.streaq: streaq worker \w+: background tasks \(drain, "
        r"timeout 0\.5s, on signal\): 1 total: .*; not completed: "
        r"tests\.durable\.durable_app\.hang_once "
        rf"{task_id} \(cancelled\)",
        first.output,
    ), first.output
    second = await start_worker(spawn)
    with trio.fail_after(30):
        result = await client.result(task_id)
    await stop(second)
    assert result.success
    assert marks(durable_env, "d") == [f"done {second.process.pid}"]


async def test_a_timeout_fails_the_task_and_a_stuck_thread_is_abandoned_at_the_deadline(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    report_path = durable_env / "report.json"
    first = await start_worker(spawn, "--drain-timeout", "0.5", "--report-json", str(report_path))
    slow_id, stuck_id = await client.hand_off(
        [
            BackgroundTask(durable_app.too_slow, "t"),
            BackgroundTask(durable_app.hang_sync_once, "s"),
        ]
    )
    with trio.fail_after(30):
        slow = await client.result(slow_id)
    assert not slow.success
    assert repr(slow.exception) == "TimeoutError('timed out after 1 s')"
    await first.wait_for("hang_sync_once s hanging")
    await stop(first)  # the thread never returns: abandoned, the process exits anyway
    report = json.loads(report_path.read_text())
    assert (report["counts"]["failed"], report["counts"]["abandoned"]) == (1, 1)
    assert [(r["engine_id"], r["error"], r["attempts"]) for r in report["failed"]] == [
        (slow_id, "TimeoutError: timed out after 1 s", 1)
    ]
    [abandoned] = report["abandoned"]
    assert abandoned["engine_id"] == stuck_id
    assert abandoned["reason"].startswith("its thread was still running at the drain deadline")
    second = await start_worker(spawn)
    with trio.fail_after(30):
        assert (await client.result(stuck_id)).result == "s"
    await stop(second)


async def test_a_worker_honours_the_retries_and_timeout_of_a_policy(
    client: StreaqBackend, durable_env: Path, spawn: Spawn
) -> None:
    report_path = durable_env / "report.json"
    worker = await start_worker(spawn, "--report-json", str(report_path))
    ids = await client.hand_off(
        [
            BackgroundTask(durable_app.flaky, "twice", 2),  # retries=2: a third attempt passes
            BackgroundTask(durable_app.flaky, "always", 5),  # out of retries after 3 attempts
            BackgroundTask(durable_app.flaky_sync, "sync", 2),  # @trio_background.task's policy
            BackgroundTask(durable_app.slow_once, "slow"),  # timeout=0.5 then one retry
        ]
    )
    with trio.fail_after(30):
        results = [await client.result(task_id) for task_id in ids]
    await stop(worker)
    pid = worker.process.pid
    assert [(r.success, r.tries) for r in results] == [(True, 3), (False, 3), (True, 3), (True, 2)]
    assert [results[0].result, results[2].result, results[3].result] == ["twice", "sync", "slow"]
    assert repr(results[1].exception) == "ValueError('always fails attempt 3')"
    for name, attempts in [("twice", 3), ("always", 3), ("sync", 3), ("slow", 2)]:
        assert marks(durable_env, name) == [f"attempt {pid}"] * attempts
    # One record per task, with its attempts: a retried attempt is not an end.
    report = json.loads(report_path.read_text())
    assert (report["counts"]["completed"], report["counts"]["failed"]) == (3, 1)
    assert sorted((r["engine_id"], r["attempts"]) for r in report["completed"]) == sorted(
        [(ids[0], 3), (ids[2], 3), (ids[3], 2)]
    )
    [failed] = report["failed"]
    assert (failed["engine_id"], failed["error"], failed["attempts"]) == (
        ids[1],
        "ValueError: always fails attempt 3",
        3,
    )
    assert re.search(
        rf"durable task tests\.durable\.durable_app\.slow_once \({ids[3]}\) failed on attempt 1 "
        r"of 2; retrying in 0s: TimeoutError: timed out after 0\.5 s",
        worker.output,
    ), worker.output
    assert re.search(
        rf"durable task tests\.durable\.durable_app\.flaky \({ids[0]}\) failed on attempt 2 "
        r"of 3; retrying in 0\.2s: ValueError: twice fails attempt 2",
        worker.output,
    ), worker.output


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "nothing",
            r"expected MODULE:BACKEND \(for example examples\.durable:backend\), got 'nothing'",
        ),
        (
            "no_such_module:backend",
            r"cannot import module 'no_such_module': no such module \(run from the folder "
            r"that contains it, or check the name\)",
        ),
        (
            "tests.durable.durable_app:nope",
            r"module 'tests\.durable\.durable_app' has no attribute 'nope'",
        ),
        (
            "tests.durable.durable_app:mark",
            r"tests\.durable\.durable_app:mark is a function, not a StreaqBackend: point at the "
            r"backend the app's durable functions are registered on",
        ),
    ],
)  # fmt: skip
def test_a_bad_backend_spec_exits_2_with_the_fix(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", spec])
    assert exit_info.value.code == 2
    assert re.search(rf"error: {message}\n\Z", capsys.readouterr().err)


async def test_a_worker_rides_out_a_redis_outage(
    tmp_path_factory: pytest.TempPathFactory,
    durable_env: Path,
    spawn: Spawn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_server = RedisServer(tmp_path_factory.mktemp("aof-redis"), appendonly=True)
    redis_server.start()
    try:
        monkeypatch.setenv("TB_REDIS_URL", redis_server.url)
        report_path = durable_env / "report.json"
        worker = await start_worker(spawn, "--report-json", str(report_path))
        async with durable_app.make_backend() as client:
            [before] = await client.hand_off([BackgroundTask(durable_app.mark, "before")])
            with trio.fail_after(30):
                assert (await client.result(before)).result == "before"
        redis_server.stop()  # SIGKILL: a crash
        await worker.wait_for(r"lost Redis at redis://127\.0\.0\.1:\d+/0 .*; connecting again")
        redis_server.start()
        await worker.wait_for(r"Redis is back, reading the queue")
        async with durable_app.make_backend() as client:
            [after] = await client.hand_off([BackgroundTask(durable_app.mark, "after")])
            with trio.fail_after(30):
                assert (await client.result(after)).result == "after"
        await stop(worker)  # exit status 0, not 1
    finally:
        redis_server.stop()
    report = json.loads(report_path.read_text())
    assert report["counts"]["completed"] == 2
    assert [r["engine_id"] for r in report["completed"]] == [before, after]
