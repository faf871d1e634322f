"""``examples/durable.py`` as docs/durable.rst runs it: web process, Redis, two workers, a deploy.

Every process is real (``python -m trio_background``, ``python -m
trio_background.streaq worker``) on the test's Redis. While orders keep
coming, the web process is restarted (SIGTERM), then killed (SIGKILL) right
after a response, and a worker is restarted (SIGTERM): every order still gets
exactly its invoice.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    pytest.skip("streaQ (the durable backend) needs Python 3.11+", allow_module_level=True)

import httpx
import trio

from tests.durable.conftest import Spawn
from tests.redis_fixture import RedisServer
from tests.test_cli import Server

WEB = ("-m", "trio_background", "examples.durable:app", "--bind", "127.0.0.1:0")
WORKER = ("-m", "trio_background.streaq", "worker", "examples.durable:backend")


@pytest.fixture
def outbox(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The example's queue is "invoices": give this test a database of its own.
    monkeypatch.setenv("REDIS_URL", redis_server.url.removesuffix("/0") + "/1")
    monkeypatch.setenv("OUTBOX", str(tmp_path / "outbox"))
    return tmp_path / "outbox"


async def start_web(spawn: Spawn) -> tuple[Server, str]:
    web = await spawn(*WEB)
    url = (await web.wait_for(r"Running on (http://127\.0\.0\.1:\d+)")).group(1)
    return web, url


async def start_worker(spawn: Spawn) -> Server:
    worker = await spawn(*WORKER)
    await worker.wait_for(r"streaq worker \w+ ready")
    return worker


async def order(url: str, number: int) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(f"/orders/{number}", params={"email": f"{number}@example.com"})
    assert response.json() == {"order": number, "invoice": "on its way"}


async def wait_for_invoices(workers: list[Server], numbers: range) -> None:
    """Read every worker's log until each order's invoice was sent by one of them."""
    patterns = [rf"invoice for order {n} sent to {n}@example\.com" for n in numbers]

    def done() -> bool:
        return all(any(re.search(p, w.output) for w in workers) for p in patterns)

    async def pump(worker: Server, nursery: trio.Nursery) -> None:
        assert worker.process.stderr is not None
        while not done():
            chunk = await worker.process.stderr.receive_some()
            if not chunk:
                return
            worker.output += chunk.decode()
        nursery.cancel_scope.cancel()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            if not done():
                for worker in workers:
                    nursery.start_soon(pump, worker, nursery)
    assert done(), "\n".join(w.output for w in workers)


async def test_a_deploy_loses_no_invoice(outbox: Path, spawn: Spawn) -> None:
    web, url = await start_web(spawn)
    first, second = await start_worker(spawn), await start_worker(spawn)
    for number in range(1, 6):
        await order(url, number)

    # Deploy the web process: SIGTERM drains it; its invoices are in Redis already.
    web.process.send_signal(signal.SIGTERM)
    assert await web.finish() == 0, web.output
    [summary] = re.findall(r"background tasks \(drain.*\): 10 total: .*", web.output)
    assert "5 completed" in summary
    assert "5 handed_off" in summary
    web, url = await start_web(spawn)
    for number in range(6, 11):
        await order(url, number)

    # Deploy a worker: SIGTERM drains it; the other one keeps taking orders.
    first.process.send_signal(signal.SIGTERM)
    assert await first.finish() == 0, first.output
    third = await start_worker(spawn)
    for number in range(11, 16):
        await order(url, number)

    # The web process crashes right after answering: the order is in Redis.
    await order(url, 16)
    web.process.kill()
    await web.finish()

    await wait_for_invoices([first, second, third], range(1, 17))
    for worker in (second, third):
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.finish() == 0, worker.output
    assert sorted(os.listdir(outbox)) == sorted(f"invoice-{n}.txt" for n in range(1, 17))
    assert (outbox / "invoice-16.txt").read_text() == "invoice for order 16 to 16@example.com\n"
