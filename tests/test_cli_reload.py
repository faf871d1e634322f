"""Issue 25: ``python -m trio_background APP --reload`` for development.

Whole processes on 127.0.0.1:0, as in test_cli_production.py: an app module
written to ``tmp_path`` (on ``PYTHONPATH``) is edited while it serves. Its
background task waits for a file the test creates, so the test decides when
the old worker's task ends. Each edit moves the file's modification time on
by two seconds, so the change shows whatever the file system's resolution.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from .processes import Server, start_cli
from .test_cli import run_cli

APP = """\
import os
import sys
import time

import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from trio_background import BackgroundTasksMiddleware, from_scope

VERSION = "{version}"


async def version(request):
    return PlainTextResponse(VERSION)


async def wait_for_file(path):
    print(f"task waiting started in {{os.getpid()}}", file=sys.stderr, flush=True)
    while not os.path.exists(path):  # the test creates it
        await trio.sleep(0.05)  # the task waits for the test: a file, from another process


async def task(request):
    added = from_scope(request.scope).add_task(wait_for_file, request.query_params["path"])
    return JSONResponse({{"id": added.id, "pid": os.getpid()}})


async def block_the_loop():
    print(f"task blocking started in {{os.getpid()}}", file=sys.stderr, flush=True)
    time.sleep(60)  # a task that trio cannot stop


async def block(request):
    from_scope(request.scope).add_task(block_the_loop)
    return JSONResponse({{"pid": os.getpid()}})


app = BackgroundTasksMiddleware(
    Starlette(
        routes=[
            Route("/version", version),
            Route("/task", task, methods=["POST"]),
            Route("/block", block, methods=["POST"]),
        ]
    )
)
"""


def write_app(folder: Path, text: str, *, seconds: int = 2) -> None:
    """(Re)write the module, its modification time ``seconds`` past the last one.

    As an editor saves: the new file is written beside it, then put in its
    place, so no one sees it half written.
    """
    path = folder / "reload_app.py"
    before = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    new = folder / "reload_app.py.new"
    new.write_text(text)
    os.utime(new, ns=(before + seconds * 1_000_000_000,) * 2)
    new.replace(path)


async def serve(folder: Path, *args: str) -> tuple[Server, str]:
    write_app(folder, APP.format(version="one"))
    path = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    server = await start_cli(
        "--reload", *args, app="reload_app:app", env={"PYTHONPATH": os.pathsep.join(path)}
    )
    return server, await server.url()


async def version(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as client:  # a new connection
        return (await client.get("/version")).text


async def add_task(url: str, release: Path) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/task", params={"path": str(release)})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


async def wait_for_version(url: str, wanted: str) -> None:
    """New connections until one answers ``wanted`` (the old worker stops accepting)."""
    with trio.fail_after(10):
        for _ in range(200):
            if await version(url) == wanted:
                return
            await trio.sleep(0.02)  # paces the polling; the answer is the synchronisation
    raise AssertionError(f"no worker answered {wanted!r}")


async def test_a_change_reloads_while_the_old_workers_task_finishes(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server, url = await serve(tmp_path, "--drain-timeout", "5", "--report-json", str(report_path))
    assert await version(url) == "one"
    release = tmp_path / "release"
    old = await add_task(url, release)
    await server.wait_for(rf"task waiting started in {old['pid']}")
    write_app(tmp_path, APP.format(version="two"))
    await server.wait_for(
        r"INFO trio_background: reload: \S*reload_app\.py changed; starting a new worker"
    )
    await server.wait_for(r"reload: worker 0 \(pid \d+\) serves the new code")
    # The old worker stops accepting (its tasks have until the deadline).
    await server.wait_for(rf"\[{old['pid']}\] INFO trio_background: shutdown: draining")
    await wait_for_version(url, "two")
    new = await add_task(url, release)
    assert new["pid"] != old["pid"]
    await server.wait_for(rf"task waiting started in {new['pid']}")
    release.touch()  # both tasks end: the old worker's in its drain
    await server.wait_for(
        rf"\[{old['pid']}\] INFO trio_background: background tasks \(drain, timeout 5s, on "
        r"reload\): 1 total: 1 completed"
    )
    server.process.send_signal(signal.SIGINT)
    assert await server.finish() == 0, server.output
    report = json.loads(report_path.read_text())
    assert report["counts"]["completed"] == report["total"] == 2
    assert sorted(r["id"] for r in report["completed"]) == sorted([old["id"], new["id"]])
    assert [(s["pid"], s["fate"]) for s in report["workers"]] == [
        (old["pid"], "retired"),
        (new["pid"], "exited"),
    ]
    assert [s["report"]["cause"] for s in report["workers"]] == ["reload", "signal"]
    assert report["cause"] == "signal"
    assert report["lost"] == []
    assert "1 worker, 2 processes over 1 reload: background tasks (drain, timeout 5s, on " \
        "signal): 2 total: 2 completed" in server.output  # fmt: skip


async def test_an_edit_that_cannot_start_leaves_the_old_code_serving(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server, url = await serve(tmp_path, "--drain-timeout", "1", "--report-json", str(report_path))
    assert await version(url) == "one"
    write_app(tmp_path, APP.format(version="one") + "broken = (\n")
    await server.wait_for(r"SyntaxError: '\(' was never closed")
    await server.wait_for(
        r"ERROR trio_background: reload: worker 0 \(pid \d+\) exited with code 2 before it was "
        r"ready; worker 0 \(pid \d+\) keeps serving the previous code until the next change"
    )
    assert await version(url) == "one"
    write_app(tmp_path, APP.format(version="two"))  # fixed
    await server.wait_for(r"reload: worker 0 \(pid \d+\) serves the new code")
    await wait_for_version(url, "two")
    server.process.send_signal(signal.SIGINT)
    assert await server.finish() == 0, server.output
    report = json.loads(report_path.read_text())
    assert [s["fate"] for s in report["workers"]] == ["retired", "no report", "exited"]
    assert report["lost"] == []
    assert "exited before it was ready: stopping" not in server.output


async def test_a_file_put_back_with_an_older_time_reloads_too(tmp_path: Path) -> None:
    # cp -p, or an editor restoring a backup: the time moves back, not forward.
    server, url = await serve(tmp_path)
    assert await version(url) == "one"
    write_app(tmp_path, APP.format(version="two"), seconds=-60)
    await server.wait_for(r"reload: worker 0 \(pid \d+\) serves the new code")
    await wait_for_version(url, "two")
    server.process.send_signal(signal.SIGINT)
    assert await server.finish() == 0, server.output


async def test_in_cancel_mode_a_reload_cancels_the_old_workers_task(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server, url = await serve(tmp_path, "--mode", "cancel", "--report-json", str(report_path))
    old = await add_task(url, tmp_path / "never")
    await server.wait_for(rf"task waiting started in {old['pid']}")
    write_app(tmp_path, APP.format(version="two"))
    await server.wait_for(
        rf"\[{old['pid']}\] WARNING trio_background: background tasks \(cancel, on reload\): "
        r"1 total: 0 completed, 0 failed, 1 cancelled"
    )
    await wait_for_version(url, "two")
    server.process.send_signal(signal.SIGINT)
    assert await server.finish() == 0, server.output
    report = json.loads(report_path.read_text())
    assert (report["total"], report["counts"]["cancelled"]) == (1, 1)
    (cancelled,) = report["cancelled"]
    assert (cancelled["id"], cancelled["name"]) == (old["id"], "wait_for_file")
    assert re.fullmatch(rf"{old['pid']}-\S+", cancelled["id"])


async def test_a_retired_worker_that_cannot_stop_is_killed_and_reported_lost(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "report.json"
    server, url = await serve(tmp_path, "--mode", "cancel", "--report-json", str(report_path))
    async with httpx.AsyncClient(base_url=url) as client:
        old = (await client.post("/block")).json()["pid"]
    await server.wait_for(rf"task blocking started in {old}")
    write_app(tmp_path, APP.format(version="two"))
    await server.wait_for(
        rf"ERROR trio_background: worker 0 \(pid {old}\) still running at its retirement's "
        r"deadline: killed"
    )
    await wait_for_version(url, "two")  # the new worker serves all along
    server.process.send_signal(signal.SIGINT)
    assert await server.finish() == 1, server.output  # as when a worker is killed at shutdown
    report = json.loads(report_path.read_text())
    assert [s["fate"] for s in report["workers"]] == ["killed", "exited"]
    (lost,) = report["lost"]
    assert (lost["pid"], lost["reason"]) == (
        old, "the worker was still running at its retirement's deadline (a reload): killed"
    )  # fmt: skip


async def test_every_worker_reloads(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server, url = await serve(tmp_path, "--workers", "2", "--report-json", str(report_path))
    await server.wait_for(r"Running on", new=True)  # the second worker
    write_app(tmp_path, APP.format(version="two"))
    await server.wait_for(r"reload: \S+ changed; starting 2 new workers")
    for index in (0, 1):
        await server.wait_for(rf"reload: worker {index} \(pid \d+\) serves the new code")
    await wait_for_version(url, "two")
    server.process.send_signal(signal.SIGINT)
    assert await server.finish() == 0, server.output
    report = json.loads(report_path.read_text())
    fates = sorted((s["worker"], s["fate"]) for s in report["workers"])
    assert fates == [(0, "exited"), (0, "retired"), (1, "exited"), (1, "retired")]
    assert len({s["pid"] for s in report["workers"]}) == 4


def test_reload_and_a_shutdown_delay_are_refused_together() -> None:
    result = run_cli("tests.cli_app:app", "--reload", "--shutdown-delay", "5")
    assert result.returncode == 2
    assert result.stderr == (
        "python -m trio_background: error: --reload cannot be used with --shutdown-delay: "
        "after each change the old worker would keep accepting, and answering with the old "
        "code, for the delay. --shutdown-delay is for load balancers in production, --reload "
        "for development: drop one of them\n"
    )


def test_help_says_what_a_reload_does_to_running_tasks() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # as wide as the terminal
    assert (
        "--reload for development: when a source file changes, start new worker processes at "
        "once and retire the old ones as the first signal does: their running tasks finish "
        "there, up to --drain-timeout (--mode cancel cuts them), while the new code serves; "
        "an edit that cannot start leaves the old code serving (default workers: 1)"
    ) in text
