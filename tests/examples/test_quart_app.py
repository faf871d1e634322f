"""examples/quart_app.py end to end: real Hypercorn (trio worker), in process and from the CLI."""

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

from examples import quart_app
from trio_background.testing import open_live_server

from .helpers import read_until

ROOT = Path(__file__).resolve().parents[2]


async def test_welcome_and_audit_after_the_response(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(quart_app.app.config, "OUTBOX", tmp_path / "outbox.txt")
    monkeypatch.setitem(quart_app.app.config, "AUDIT_LOG", tmp_path / "audit.txt")
    async with open_live_server(quart_app.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            ada = await client.post(
                "/signup", data={"email": "ada@example.com"}, headers={"x-request-id": "1"}
            )
            alan = await client.post(
                "/signup", data={"email": "alan@example.com"}, headers={"x-request-id": "2"}
            )
        report = await server.shutdown()

    assert ada.status_code == alan.status_code == 202
    assert ada.json() == {"status": "signed up", "email": "ada@example.com"}
    assert report.total == report.count("completed") == 4
    assert sorted(r.name for r in report.completed) == ["audit", "audit"] + ["send_welcome"] * 2
    assert {r.request for r in report.completed} == {"POST /signup"}
    outbox = (tmp_path / "outbox.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(outbox) == [
        "from team@example.com to ada@example.com: welcome!",
        "from team@example.com to alan@example.com: welcome!",
    ]
    audit = (tmp_path / "audit.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(audit) == [
        "request 1 POST /signup: ada@example.com signed up",
        "request 2 POST /signup: alan@example.com signed up",
    ]


async def test_served_by_the_cli(tmp_path: Path) -> None:
    """``python -m trio_background examples.quart_app:app``, as the docstring says, then SIGINT."""
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "trio_background",
        "examples.quart_app:app",
        "--bind",
        "127.0.0.1:0",
        "--report-json",
        str(report_path),
    ]
    # The example's package first, then whatever the test run had.
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    running = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    cwd=tmp_path,
                    env={**os.environ, "PYTHONPATH": python_path},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stderr is not None
            port = int(await read_until(process.stderr, running))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                response = await client.post("/signup", data={"email": "grace@example.com"})
            assert response.status_code == 202
            process.send_signal(signal.SIGINT)
            while await process.stderr.receive_some():
                pass
            assert await process.wait() == 0

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["counts"]["completed"] == report["total"] == 2
    assert (tmp_path / "outbox.txt").read_text(encoding="utf-8") == (
        "from team@example.com to grace@example.com: welcome!\n"
    )
    assert (tmp_path / "audit.txt").read_text(encoding="utf-8") == (
        "request - POST /signup: grace@example.com signed up\n"
    )
