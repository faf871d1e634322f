"""Whole processes: the production command line (workers, TLS, unix sockets, config
files, signal storms, the report file, readiness during a drain).

Real time, real processes on 127.0.0.1:0; waits are on lines the processes
print, with generous bounds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from .processes import start, start_cli

EXIT_MARGIN = 4.0


async def pids_serving(url: str, wanted: int) -> dict[int, int]:
    """Requests on new connections until ``wanted`` worker processes answered."""
    seen: dict[int, int] = {}
    for _ in range(200):
        async with httpx.AsyncClient(base_url=url) as client:
            pid = (await client.get("/pid")).json()["pid"]
        seen[pid] = seen.get(pid, 0) + 1
        if len(seen) == wanted:
            return seen
    raise AssertionError(f"only {len(seen)} of {wanted} workers answered 200 requests")


async def test_two_workers_one_deadline_one_report(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli(
        "--workers", "2", "--drain-timeout", "1", "--report-json", str(report_path)
    )  # fmt: skip
    url = await server.url()
    await server.wait_for(r"Running on", new=True)  # the second worker
    requests_by_pid = await pids_serving(url, 2)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    status = await server.finish()
    took = time.monotonic() - signalled
    assert status == 0, server.output
    assert took < 1 + 1 + EXIT_MARGIN  # the deadline, the cut, the margin
    report = json.loads(report_path.read_text())
    sections = report["workers"]
    assert {s["pid"]: s["report"]["total"] for s in sections} == requests_by_pid
    assert [s["fate"] for s in sections] == ["exited", "exited"]
    assert report["total"] == report["counts"]["cancelled"] == sum(requests_by_pid.values())
    assert (report["mode"], report["cause"]) == ("drain", "signal")
    assert {r["worker"] for r in report["cancelled"]} == {0, 1}
    assert "2 workers: background tasks (drain, timeout 1s, on signal): " in server.output
    # The workers are ours: the line for Hypercorn's own workers stays out.
    assert "is shutting this worker down" not in server.output


async def test_a_dead_worker_is_logged_and_replaced(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli("--workers", "2", "--report-json", str(report_path))
    url = await server.url()
    await server.wait_for(r"Running on", new=True)
    victim = next(iter(await pids_serving(url, 2)))
    os.kill(victim, signal.SIGKILL)
    await server.wait_for(
        rf"worker \d \(pid {victim}\) died \(exit code -9\) while serving; last known: "
        r"\d+ batches running( \(\d+ tasks active\))?; so far 0 completed.*; starting a replacement"
    )
    await server.wait_for(r"Running on", new=True)  # the replacement
    server.process.send_signal(signal.SIGTERM)  # a drain of 30 s (the middleware's)...
    await server.wait_for("shutdown: draining background tasks for up to 30s")
    server.process.send_signal(signal.SIGTERM)  # ...cut short by the second signal
    # A worker died: the total leaves its tasks out, so the exit status says so.
    assert await server.finish() == 1, server.output
    report = json.loads(report_path.read_text())
    assert report["mode"] == "cancel"
    fates = {s["pid"]: s["fate"] for s in report["workers"]}
    assert len(fates) == 3
    assert fates.pop(victim) == "died"
    assert list(fates.values()) == ["exited", "exited"], server.output
    (lost,) = report["lost"]
    assert (lost["pid"], lost["reason"]) == (
        victim, "the worker died (exit code -9) while serving"
    )  # fmt: skip
    # What it last said it had in flight (sent every quarter second).
    assert lost["tasks_active"] == len(lost["tasks"]) == report["lost_tasks"]
    assert all(t["name"] == "sleeper" and t["state"] == "running" for t in lost["tasks"])
    assert "1 worker processes left no report, with " in server.output


async def test_a_worker_that_cannot_stop_is_killed_at_the_exit_deadline(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli(
        "--workers", "2", "--mode", "cancel", "--report-json", str(report_path)
    )  # fmt: skip
    url = await server.url()
    await server.wait_for(r"Running on", new=True)
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/block")).status_code == 200
    await server.wait_for("task blocking started")
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await server.finish() == 1, server.output
    # The deadline (now), the kill 0.8 s later, the merged report: by the deadline + 1 s.
    assert time.monotonic() - signalled < 1
    assert "still running at the exit deadline: killed" in server.output
    report = json.loads(report_path.read_text())
    assert sorted(s["fate"] for s in report["workers"]) == ["exited", "killed"]
    (lost,) = report["lost"]
    assert lost["reason"] == "the worker was still running at the exit deadline: killed"
    # Its loop was blocked from the task's start: it said nothing since,
    # and the entry says how old what it last said is.
    assert lost["as_of"] is not None
    assert lost["as_of"] > 0


async def test_a_worker_that_fails_at_startup_stops_the_server() -> None:
    server = await start(
        "-m", "trio_background", "tests.cli_app:failing_startup_app", "--workers", "2",
        "--bind", "127.0.0.1:0",
    )  # fmt: skip
    assert await server.finish() == 1
    assert re.search(
        r"worker \d \(pid \d+\) exited with code \d+ before it was ready", server.output
    )


async def test_tls_and_a_unix_socket_in_one_server(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    certificate.private_key_pem.write_to_path(str(keyfile))
    socket_path = tmp_path / "app.sock"
    server = await start_cli(
        "--bind", "127.0.0.1:0", "--certfile", str(certfile), "--keyfile", str(keyfile),
        "--insecure-bind", f"unix:{socket_path}",
    )  # fmt: skip
    url = await server.url()
    assert url.startswith("https://127.0.0.1:")
    await server.wait_for(rf"Running on http://unix:{socket_path} ")
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    async with httpx.AsyncClient(base_url=url, verify=trusted) as client:
        assert (await client.get("/health")).json()["status"] == "serving"
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    async with httpx.AsyncClient(base_url="http://localhost", transport=transport) as client:
        assert (await client.get("/health")).status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 0, server.output


async def test_a_toml_config_file_several_binds_and_a_factory(tmp_path: Path) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text('bind = ["127.0.0.1:1"]\nroot_path = "/api"\nkeep_alive_timeout = 2\n')
    socket_path = tmp_path / "app.sock"
    server = await start(
        "-m", "trio_background", "tests.cli_app:make_app", "--factory", "--config", str(config),
        "--bind", "127.0.0.1:0", "--bind", f"unix:{socket_path}", "--keep-alive", "3",
    )  # fmt: skip
    url = await server.url()  # the command line's binds won over the file's
    await server.wait_for(rf"Running on http://unix:{socket_path} ")
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/root-path")).json() == {"root_path": "/api"}
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    async with httpx.AsyncClient(base_url="http://localhost", transport=transport) as client:
        assert (await client.get("/root-path")).json() == {"root_path": "/api"}
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 0, server.output


@pytest.mark.parametrize(("signum", "count"), [(signal.SIGTERM, 10), (signal.SIGINT, 3)])
async def test_signal_storms_never_lose_the_report(
    tmp_path: Path, signum: signal.Signals, count: int
) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli("--drain-timeout", "5", "--report-json", str(report_path))
    url = await server.url()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/work")).status_code == 200
    await server.wait_for("task long started")
    for _ in range(count):
        if server.process.returncode is not None:
            break
        server.process.send_signal(signum)
        await trio.sleep(0.01)  # the storm's pace, not a synchronisation
    assert await server.finish() == 0, server.output
    report = json.loads(report_path.read_text())
    assert report["mode"] == "cancel"  # the second signal cut the drain short
    assert report["total"] == 3


async def test_sigkill_while_the_report_is_written_keeps_the_previous_one(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "report.json"
    report_path.write_text('{"previous": true}\n')
    server = await start_cli(
        "--report-json", str(report_path), env={"_TRIO_BACKGROUND_PAUSE_BEFORE_RENAME": "1"}
    )
    await server.url()
    server.process.send_signal(signal.SIGTERM)
    temporary = Path((await server.wait_for(r"report: (\S+) written, paused")).group(1))
    assert temporary.parent == tmp_path
    assert (
        json.loads(await trio.Path(temporary).read_text())["total"] == 0
    )  # the whole new report, on disk
    assert report_path.read_text() == '{"previous": true}\n'
    server.process.kill()
    assert await server.finish() == -signal.SIGKILL
    assert report_path.read_text() == '{"previous": true}\n'


async def test_readiness_fails_at_the_first_signal_while_new_connections_are_answered(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli(
        "--drain-timeout", "30", "--shutdown-delay", "30", "--report-json", str(report_path)
    )  # fmt: skip
    url = await server.url()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/work")).status_code == 200
        assert (await client.get("/health")).status_code == 200
    await server.wait_for("task long started")
    server.process.send_signal(signal.SIGTERM)
    for _ in range(100):  # until the signal was seen; each on a new connection
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/health")
        if response.status_code == 503:
            break
    assert response.status_code == 503
    assert response.json()["status"] == "shutting down"
    async with httpx.AsyncClient(base_url=url) as client:  # a new connection
        assert (await client.post("/work")).status_code == 200  # still accepted
    server.process.send_signal(signal.SIGTERM)  # enough: cut now
    assert await server.finish() == 0, server.output
    report = json.loads(report_path.read_text())
    assert report["total"] == 6
    assert report["mode"] == "cancel"


async def test_workers_that_cannot_write_their_reports_make_the_parent_fail(
    tmp_path: Path,
) -> None:
    # The workers write their reports in a folder of the parent's under
    # TMPDIR; a folder where each report's file should go makes the write
    # fail as a full disk would.
    report_path = tmp_path / "report.json"
    server = await start_cli(
        "--workers", "2", "--mode", "cancel", "--report-json", str(report_path),
        env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    url = await server.url()
    await server.wait_for(r"Running on", new=True)
    requests_by_pid = await pids_serving(url, 2)
    (folder,) = await trio.Path(tmp_path).glob("trio-background-*")
    for index in range(2):
        await (folder / f"worker-{index}.json").mkdir()
    await trio.sleep(0.5)  # two statistics messages (every 0.25 s), not a synchronisation
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 1, server.output
    assert server.output.count("cannot write its report to") == 2
    report = json.loads(report_path.read_text())
    assert report["total"] == 0  # nothing counted...
    lost = report["lost"]  # ...and why, with what was in flight
    # The workers end in either order.
    assert sorted(entry["reason"] for entry in lost) == [
        "the worker exited with code 1 and left no report (cannot write its report: "
        f"[Errno 21] Is a directory: '{folder / f'worker-{index}.json'}')"
        for index in range(2)
    ]
    assert sorted(e["tasks_active"] for e in lost) == sorted(requests_by_pid.values())
    assert report["lost_tasks"] == sum(requests_by_pid.values())


async def test_a_report_that_cannot_be_written_at_the_end_fails_the_exit(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli("--report-json", str(report_path))
    await server.url()
    report_path.mkdir()  # checked at startup; the disk changed since
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 1, server.output
    assert f"cannot write the report to --report-json {report_path}: [Errno 21]" in (server.output)
    assert "Traceback" not in server.output


async def test_task_ids_are_unique_across_workers_and_never_name_another_task(
    tmp_path: Path,
) -> None:
    """Before: ``1.0, 2.0, 3.0`` from one pid and ``1.0, 2.0`` from the other, and a
    status lookup of ``1.0`` answered with two different tasks, alternating."""
    server = await start_cli("--workers", "2", "--mode", "cancel")
    url = await server.url()
    await server.wait_for(r"Running on", new=True)  # the second worker
    owners: dict[str, int] = {}
    for _ in range(200):  # new connections, until both workers gave ids
        async with httpx.AsyncClient(base_url=url) as client:
            answer = (await client.get("/pid")).json()
        assert answer["task"] not in owners
        owners[answer["task"]] = answer["pid"]
        if len(set(owners.values())) == 2 and len(owners) >= 6:
            break
    assert len(set(owners.values())) == 2
    for task_id, owner in owners.items():
        assert task_id.startswith(f"{owner}-")
        for _ in range(4):
            async with httpx.AsyncClient(base_url=url) as client:
                found = (await client.get(f"/status/{task_id}")).json()
            # Its own worker finds it; the other says it does not know it.
            assert found["id"] == (task_id if found["pid"] == owner else None)
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 0, server.output
