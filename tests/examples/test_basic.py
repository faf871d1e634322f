"""examples/basic.py end to end: real Hypercorn, and the CLI the docstring names."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from examples import basic
from trio_background.testing import open_live_server

from .helpers import read_until

ROOT = Path(__file__).resolve().parents[2]


async def test_notification_is_written_after_the_response(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the seed writes log.txt to the working directory
    async with open_live_server(basic.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await client.post("/send-notification/ada@example.com")
            second = await client.post("/send-notification/alan@example.com")
        report = await server.shutdown()

    assert first.status_code == 200
    assert first.json() == {"message": "Notification sent in the background"}
    assert second.status_code == 200
    assert report.total == 2
    assert report.count("completed") == 2
    assert {r.request for r in report.completed} == {
        "POST /send-notification/ada@example.com",
        "POST /send-notification/alan@example.com",
    }
    assert {r.name for r in report.completed} == {"write_notification"}
    # Both lines are kept (the seed's mode="w" kept only the last one); the two
    # requests' batches may run in either order.
    lines = (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(lines) == [
        "notification for ada@example.com: some notification",
        "notification for alan@example.com: some notification",
    ]


async def test_served_by_the_cli(tmp_path: Path) -> None:
    """``python -m trio_background examples.basic:app``, as the docstring says, then SIGINT."""
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "trio_background",
        "examples.basic:app",
        "--bind",
        "127.0.0.1:0",
        "--report-json",
        str(report_path),
    ]
    running = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # run_process kills the server if the test fails or times out.
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    cwd=tmp_path,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stderr is not None
            port = int(await read_until(process.stderr, running))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                response = await client.post("/send-notification/grace@example.com")
            assert response.status_code == 200
            process.send_signal(signal.SIGINT)
            output = b""
            while chunk := await process.stderr.receive_some():
                output += chunk
            assert await process.wait() == 0

    assert b"1 completed" in output  # the report's summary line
    assert (tmp_path / "log.txt").read_text(encoding="utf-8") == (
        "notification for grace@example.com: some notification\n"
    )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["counts"]["completed"] == 1
    assert report["total"] == 1
