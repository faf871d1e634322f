"""Issue 23, item 0, whole process: a server paused by SIGSTOP keeps answering keep-alive.

Raw keep-alive connections (cheap clients, so the server is the busy side)
loop ``GET /tiny`` (one tiny task each) while the server process is stopped
(SIGSTOP) for 1.2 s, six times, and continued (SIGCONT). Every request must
be answered and every task completed. The old core shielded a response's
final send for a fixed second: a longer pause cancelled Hypercorn's send
after the body but before it recycled the connection, and the next request
on it was never answered (old core: the load's bound, ``trio.TooSlowError``).

Real time: a process cannot share a MockClock. The pause between SIGSTOP and
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

CONNECTIONS = 32
PER_CONNECTION = 100
PAUSES = 6
PAUSE = 1.2  # longer than the old core's fixed one-second shield
REQUEST = b"GET /tiny HTTP/1.1\r\nhost: server\r\n\r\n"


async def ask(stream: trio.SocketStream) -> bytes:
    """Send ``REQUEST`` on a keep-alive connection; return the whole response."""
    await stream.send_all(REQUEST)
    received = b""
    while not received.endswith(b'"ok"'):  # tests.promise_app's /tiny answers "ok"
        chunk = await stream.receive_some()
        assert chunk, f"the server closed the connection after {received!r}"
        received += chunk
    return received


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
    statuses: list[bytes] = []
    try:
        url = httpx.URL(await server.url())
        assert url.host is not None
        assert url.port is not None

        async def keep_asking() -> None:
            async with await trio.open_tcp_stream(url.host, url.port) as stream:
                for _ in range(PER_CONNECTION):
                    statuses.append((await ask(stream)).split(b"\r\n", 1)[0])
                    answered.add()

        async def pause_the_server() -> None:
            for n in range(1, PAUSES + 1):
                await answered.reach(n * total // (PAUSES + 1))
                server.process.send_signal(signal.SIGSTOP)
                try:
                    await trio.sleep(PAUSE)
                finally:
                    server.process.send_signal(signal.SIGCONT)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(CONNECTIONS):
                    nursery.start_soon(keep_asking)
                nursery.start_soon(pause_the_server)
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.process.send_signal(signal.SIGTERM)
        status = await server.finish()
    assert statuses == [b"HTTP/1.1 200 "] * total
    assert status == 0, server.output
    report = json.loads(report_path.read_text())
    assert report["counts"]["completed"] == report["total"] == total
