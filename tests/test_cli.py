"""Whole processes: ``python -m trio_background`` and plain Hypercorn, stopped by SIGTERM.

These use real time (a process cannot share a MockClock). Bounds on exit
time appear only where the issue demands one (the exit within the deadline
plus one second), with a generous margin: a slow machine makes them slower,
never wrong.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from .processes import ROOT, Server, start, start_cli

# Margin for a process to notice the signal, log, write the report and exit.
EXIT_MARGIN = 4.0


async def post_work_and_signal(server: Server) -> float:
    url = await server.url()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/work")).status_code == 200
    await server.wait_for("task long started")
    server.process.send_signal(signal.SIGTERM)
    return time.monotonic()


@pytest.mark.parametrize("mode", ["cancel", "drain"])
async def test_cli_sigterm_mid_task(tmp_path: Path, mode: str) -> None:
    report_path = tmp_path / "report.json"
    server = await start_cli(
        "--mode", mode, "--drain-timeout", "1", "--report-json", str(report_path)
    )  # fmt: skip
    signalled = await post_work_and_signal(server)
    status = await server.finish()
    took = time.monotonic() - signalled
    assert status == 0, server.output
    report = json.loads(report_path.read_text())
    assert (report["mode"], report["cause"]) == (mode, "signal")
    assert report["total"] == 3
    assert report["counts"]["cancelled"] == 1
    assert [r["name"] for r in report["cancelled"]] == ["sleeper"]
    assert report["skipped"][-1]["reason"] == "the shutdown deadline passed before it started"
    assert len(report["run_id"]) == 32
    assert report["started_at"] < report["stopped_at"]  # ISO 8601, UTC
    assert "WARNING trio_background: background tasks (" in server.output
    # Our own line at the signal, once; none of the one for Hypercorn's own workers.
    assert server.output.count("INFO trio_background: shutdown: ") == 1, server.output
    assert "is shutting this worker down" not in server.output
    if mode == "drain":
        assert took >= 1  # the short task completed, the long one had its second
        assert report["counts"]["completed"] == 1


async def test_cancel_mode_cuts_an_in_flight_request_one_second_after_the_deadline() -> None:
    # The exit bound the issue demands: deadline (now, in cancel mode) + 1 s.
    server = await start_cli("--mode", "cancel")
    url = await server.url()
    async with httpx.AsyncClient(base_url=url) as client, trio.open_nursery() as nursery:

        async def hold() -> None:
            with pytest.raises(httpx.RemoteProtocolError):  # cut by the server
                await client.post("/hold", timeout=None)

        nursery.start_soon(hold)
        await server.wait_for("request hold started")
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
    status = await server.finish()
    took = time.monotonic() - signalled
    assert status == 0, server.output
    assert 1 <= took < 1 + EXIT_MARGIN


@pytest.mark.parametrize(
    ("graceful_timeout", "at_least"),
    [("1", 1.0), ("0", 0.0)],  # drain for 1 s; cut at once (cancel)
)
async def test_plain_hypercorn_with_the_middleware(graceful_timeout: str, at_least: float) -> None:
    server = await start(
        "-m", "hypercorn", "--worker-class", "trio", "--bind", "127.0.0.1:0",
        "--graceful-timeout", graceful_timeout, "tests.cli_app:app",
    )  # fmt: skip
    signalled = await post_work_and_signal(server)
    status = await server.finish()
    took = time.monotonic() - signalled
    assert status == 0, server.output
    assert took >= at_least
    # Logged at lifespan shutdown (WARNING reaches stderr without any logging setup);
    # the line at the signal is INFO, which only the shipped config shows.
    assert "is shutting this worker down" not in server.output
    assert (
        "background tasks (lifespan shutdown): 3 total: 1 completed, 0 failed, 1 cancelled, "
        "1 skipped, 0 abandoned"
    ) in server.output


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_background", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere:app"], "cannot import module 'nowhere': no such module (run from the folder "
            "that contains it, or check the name)"),
        (["tests.cli_app:missing"], "module 'tests.cli_app' has no attribute 'missing'"),
        (["tests.cli_app:not_an_app"], "tests.cli_app:not_an_app is not an ASGI app (got int)"),
        (["tests.cli_app:wsgi_app"], "tests.cli_app:wsgi_app is a WSGI app; trio-background "
            "serves ASGI apps (async def app(scope, receive, send)): port it to an ASGI "
            "framework such as Starlette or FastAPI, or serve it without background tasks: "
            "hypercorn --worker-class trio tests.cli_app:wsgi_app"),
        (["tests.cli_app:plain_function"], "tests.cli_app:plain_function is not an ASGI app: "
            "expected async def app(scope, receive, send) or an object with such an async "
            "__call__, got function"),
        (["tests.cli_app:make_app"], "tests.cli_app:make_app is not an ASGI app: it takes no "
            "arguments; if it builds the app, pass --factory"),
        (["tests.cli_app:app", "--factory"], "--factory: tests.cli_app:app is an ASGI app itself, "
            "not a function that builds one: drop --factory"),
        (["tests.cli_app:wsgi_factory", "--factory"], "what tests.cli_app:wsgi_factory() "
            "returned is a WSGI app;"),
        (["tests.cli_app:app", "--workers", "2", "--backend", "tests.cli_app:nothing"],
            "module 'tests.cli_app' has no attribute 'nothing'"),
        (["tests.cli_app:app", "--report-json", "/nonexistent/r.json"],
            "--report-json /nonexistent/r.json: the folder /nonexistent does not exist"),
        (["tests.cli_app:app", "--config", "/nonexistent.toml"],
            "cannot read --config /nonexistent.toml: FileNotFoundError: "),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("python -m trio_background: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tests.cli_app"], "expected MODULE:APP (for example examples.basic:app), got"),
        (["tests.cli_app:app", "--bind", "h:99999"], "expected HOST:PORT with a port"),
        (["tests.cli_app:app", "--bind", ":80"], "expected HOST:PORT with a port"),
        (["tests.cli_app:app", "--drain-timeout", "-1"],
            "--drain-timeout must be a finite number of seconds >= 0, got -1.0"),
        (["tests.cli_app:app", "--shutdown-delay", "inf"],
            "--shutdown-delay must be a finite number of seconds >= 0, got inf"),
        (["tests.cli_app:app", "--drain-timeout", "soon"], "expected a number of seconds"),
        (["tests.cli_app:app", "--mode", "later"], "invalid choice: 'later'"),
        (["tests.cli_app:app", "--workers", "0"], "expected a number of processes >= 1, got '0'"),
        (["tests.cli_app:app", "-k", "asyncio"],
            "trio-background runs on Hypercorn's trio worker only, got 'asyncio'"),
    ],
)  # fmt: skip
def test_cli_argument_errors(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_import_error_shows_the_users_traceback_once() -> None:
    result = run_cli("tests.broken_app:app")
    assert result.returncode == 2
    assert result.stderr.count("Traceback (most recent call last):") == 1
    assert 'tests/broken_app.py", line 12, in <module>' in result.stderr
    assert "importlib" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "python -m trio_background: error: cannot import module 'tests.broken_app': "
        "KeyError: 'TRIO_BACKGROUND_TEST_NO_SUCH_VARIABLE' (traceback above)"
    )


def test_cli_refuses_a_symlink_at_the_report_path(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    result = run_cli("tests.cli_app:app", "--report-json", str(link))
    assert result.returncode == 2
    assert result.stderr == (
        f"python -m trio_background: error: --report-json {link} is a symlink (to {target}); "
        "refusing to write through it: give the real path\n"
    )
    assert target.read_text() == "keep me\n"


def test_cli_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("tests.cli_app:app", "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another --bind)\n"
    )
    assert "Traceback" not in result.stderr
