"""End to end through real Hypercorn (``hypercorn.trio.serve`` on 127.0.0.1:0)."""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fastapi import FastAPI, Request
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

from . import seed_apps


@asynccontextmanager
async def hypercorn_on_loopback(app: Any, graceful_timeout: float = 3.0) -> AsyncIterator[str]:
    """Serve ``app`` with plain Hypercorn; on exit, shut down gracefully."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
        )
        yield binds[0]
        stop.set()


async def test_seed_basic_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with hypercorn_on_loopback(seed_apps.basic_app()) as url:  # type: ignore[no-untyped-call]
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/send-notification/ada@example.com")
    # The server has shut down gracefully: the batch has run.
    assert response.json() == {"message": "Notification sent in the background"}
    assert (tmp_path / "log.txt").read_text() == (
        "notification for ada@example.com: some notification\n"
    )


async def test_seed_multiple_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    slept: list[float] = []
    # The seed's time.sleep(2) and time.sleep(3), recorded instead of waited.
    monkeypatch.setattr(seed_apps, "time", types.SimpleNamespace(sleep=slept.append))
    async with hypercorn_on_loopback(seed_apps.multiple_app()) as url:  # type: ignore[no-untyped-call]
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/process/ada")
    assert response.json() == {"message": "Processing started for ada"}
    assert slept == [2, 3]
    assert capsys.readouterr().out.splitlines() == [
        "Task 1 completed for ada",
        "Task 2 completed for ada",
        "Cleanup completed",
    ]


def waiting_app(release: trio.Event, done: list[str]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    async def wait_for_release(tag: str) -> None:
        await release.wait()
        done.append(tag)

    @app.get("/wait/{tag}")
    async def wait(tag: str, request: Request, background_tasks: BackgroundTasks) -> dict[str, Any]:
        background_tasks.add_task(wait_for_release, tag)
        assert request.client is not None
        return {"port": request.client.port}

    @app.get("/ping")
    async def ping(request: Request) -> dict[str, Any]:
        assert request.client is not None
        return {"port": request.client.port}

    return app


async def test_keep_alive_connection_serves_next_request_while_task_runs() -> None:
    release = trio.Event()
    done: list[str] = []
    async with hypercorn_on_loopback(waiting_app(release, done)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            first = await client.get("/wait/a")
            second = await client.get("/ping")
            # Same connection (same client port), answered while the task waits.
            assert first.json()["port"] == second.json()["port"]
            assert done == []
            release.set()
    assert done == ["a"]


async def test_client_leaving_does_not_stop_the_batch() -> None:
    release = trio.Event()
    done: list[str] = []
    async with hypercorn_on_loopback(waiting_app(release, done)) as url:
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /wait/gone HTTP/1.1\r\nHost: test\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            received += await stream.receive_some()
        assert received.startswith(b"HTTP/1.1 200")
        await stream.aclose()
        release.set()
    assert done == ["gone"]


async def test_plain_hypercorn_graceful_timeout_is_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    async def forever() -> None:
        await trio.sleep_forever()

    def after() -> None:
        raise AssertionError("never starts")

    @app.post("/stuck")
    async def stuck(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(forever)
        background_tasks.add_task(after)

    with caplog.at_level(logging.INFO, logger="trio_background"):
        async with hypercorn_on_loopback(app, graceful_timeout=0.1) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                await client.post("/stuck")
    # Reported at lifespan shutdown, after Hypercorn's deadline cut the batch.
    (summary,) = [r for r in caplog.records if "total" in r.getMessage()]
    assert summary.levelno == logging.WARNING
    # Served in this process, not by Hypercorn's own worker: no line at its shutdown.
    assert not [r for r in caplog.records if "shutting this worker down" in r.getMessage()]
    assert summary.getMessage() == (
        "background tasks (lifespan shutdown): 2 total: 0 completed, 0 failed, "
        "1 cancelled, 1 skipped, 0 abandoned; not completed: 1.0 "
        "test_plain_hypercorn_graceful_timeout_is_the_deadline.<locals>.forever (cancelled), "
        "1.1 test_plain_hypercorn_graceful_timeout_is_the_deadline.<locals>.after (skipped)"
    )
