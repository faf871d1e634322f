"""Issue 23, item 0, whole process: a server paused by SIGSTOP keeps answering keep-alive connections.

16 keep-alive connections loop ``GET /tiny`` (one tiny task each) while the
server process is stopped (SIGSTOP) for 1.5 s, three times, and continued
(SIGCONT). Every request must be answered and every task completed. The old
core shielded a response's final send for a fixed second: a longer pause
cancelled Hypercorn's send after the body but before it recycled the
connection, and the next request on it was never answered (old core: the
load's bound, ``trio.TooSlowError``).

Real time: a process cannot share a MockClock. The 1.5 s between SIGSTOP and
SIGCONT is the pause under test, not a wait for something to happen.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import trio

from .conformance.test_promise_load import Count
from .processes import start

CONNECTIONS = 16
PER_CONNECTION = 60
PAUSES = 3
PAUSE = 1.5  # longer than the old core's fixed one-second shield


async def test_keep_alive_connections_are_answered_across_sigstop_and_sigcont(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "report.json"
    server = await start(
        "-m", "trio_background", "tests.promise_app:app", "--bind", "127.0.0.1:0",
        "--report-json", str(report_path),
    )  # fmt: skip
    total = CONNECTIONS * PER_CONNECTION
    answered = Count()
    statuses: list[int] = []
    try:
        url = await server.url()
        limits = httpx.Limits(max_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=url, limits=limits) as http:

            async def keep_asking() -> None:
                for _ in range(PER_CONNECTION):
                    response = await http.get("/tiny", timeout=None)
                    statuses.append(response.status_code)
                    answered.add()

            async def pause_the_server() -> None:
                for n in range(1, PAUSES + 1):
                    await answered.reach(n * total // (PAUSES + 1))
                    server.process.send_signal(signal.SIGSTOP)
                    try:
                        await trio.sleep(PAUSE)
                    finally:
                        server.process.send_signal(signal.SIGCONT)

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for _ in range(CONNECTIONS):
                        nursery.start_soon(keep_asking)
                    nursery.start_soon(pause_the_server)
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.process.send_signal(signal.SIGTERM)
        status = await server.finish()
    assert statuses == [200] * total
    assert status == 0, server.output
    report = json.loads(report_path.read_text())
    assert report["counts"]["completed"] == report["total"] == total
