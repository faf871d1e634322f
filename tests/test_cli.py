"""Whole processes: ``python -m trio_background`` and plain Hypercorn, stopped by SIGTERM.

These use real time (a process cannot share a MockClock): the bounds on exit
time are generous, a slow machine makes them slower, never wrong.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """A server process whose stderr is read as it comes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = ""

    async def wait_for(self, pattern: str) -> re.Match[str]:
        assert self.process.stderr is not None
        with trio.fail_after(30):
            while (match := re.search(pattern, self.output)) is None:
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"process ended before {pattern!r}:\n{self.output}")
                self.output += chunk.decode()
        return match

    async def finish(self) -> int:
        assert self.process.stderr is not None
        with trio.fail_after(30):
            while chunk := await self.process.stderr.receive_some():
                self.output += chunk.decode()
            return await self.process.wait()


async def start(*args: str) -> Server:
    process = await trio.lowlevel.open_process(
        [sys.executable, *args], stderr=subprocess.PIPE, cwd=ROOT
    )
    return Server(process)


async def post_work_and_signal(server: Server) -> float:
    url = (await server.wait_for(r"Running on (http://127\.0\.0\.1:\d+)")).group(1)
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/work")).status_code == 200
    await server.wait_for("task long started")
    server.process.send_signal(signal.SIGTERM)
    return time.monotonic()


@pytest.mark.parametrize(("mode", "bound"), [("cancel", 5.0), ("drain", 1.0 + 5.0)])
async def test_cli_sigterm_mid_task(tmp_path: Path, mode: str, bound: float) -> None:
    report_path = tmp_path / "report.json"
    server = await start(
        "-m", "trio_background", "tests.cli_app:app", "--bind", "127.0.0.1:0",
        "--mode", mode, "--drain-timeout", "1", "--report-json", str(report_path),
    )  # fmt: skip
    signalled = await post_work_and_signal(server)
    status = await server.finish()
    took = time.monotonic() - signalled
    assert status == 0, server.output
    assert took < bound
    report = json.loads(report_path.read_text())
    assert report["mode"] == mode
    assert report["total"] == 3
    assert report["counts"]["cancelled"] == 1
    assert [r["name"] for r in report["cancelled"]] == ["sleeper"]
    assert report["skipped"][-1]["reason"] == "the shutdown deadline passed before it started"
    assert "WARNING trio_background: background tasks (" in server.output
    if mode == "drain":
        assert took >= 1  # the short task completed, the long one had its second
        assert report["counts"]["completed"] == 1
    else:
        assert took < 1 + 4  # cut at once, whatever the drain timeout


@pytest.mark.parametrize(
    ("graceful_timeout", "at_least", "bound"),
    [("1", 1.0, 10.0), ("0", 0.0, 5.0)],  # drain for 1 s; cut at once (cancel)
)
async def test_plain_hypercorn_with_the_middleware(
    graceful_timeout: str, at_least: float, bound: float
) -> None:
    server = await start(
        "-m", "hypercorn", "--worker-class", "trio", "--bind", "127.0.0.1:0",
        "--graceful-timeout", graceful_timeout, "tests.cli_app:app",
    )  # fmt: skip
    signalled = await post_work_and_signal(server)
    status = await server.finish()
    took = time.monotonic() - signalled
    assert status == 0, server.output
    assert at_least <= took < bound
    # Logged at lifespan shutdown (WARNING reaches stderr without any logging setup).
    assert "background tasks (lifespan shutdown): 3 total: 1 completed, 0 failed, " in (
        server.output
    )
    assert "1 cancelled, 1 skipped, 0 abandoned" in server.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere:app"], "cannot import module 'nowhere': no such module"),
        (["tests.cli_app:missing"], "module 'tests.cli_app' has no attribute 'missing'"),
        (["tests.cli_app:not_an_app"], "tests.cli_app:not_an_app is not an ASGI app (got int)"),
        (["tests.cli_app"], "expected MODULE:APP (for example examples.basic:app), got"),
        (["tests.cli_app:app", "--bind", "localhost"], "expected HOST:PORT with a port"),
        (["tests.cli_app:app", "--bind", "h:99999"], "expected HOST:PORT with a port"),
        (["tests.cli_app:app", "--drain-timeout", "-1"], "must be a finite number of seconds"),
        (["tests.cli_app:app", "--drain-timeout", "soon"], "expected a number of seconds"),
        (["tests.cli_app:app", "--mode", "later"], "invalid choice: 'later'"),
    ],
)
def test_cli_errors(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_background", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "trio_background", "tests.cli_app:app",
             "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another --bind)\n"
    )
    assert "Traceback" not in result.stderr
