"""examples/progress_builtin.py end to end through real Hypercorn.

Polling the progress endpoint is the feature under test, so these tests poll
it, with a short pause between polls and a bound on the whole.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.middleware import Middleware

from examples import progress_builtin
from trio_background import BackgroundTasksMiddleware
from trio_background.testing import open_live_server

from .helpers import Gate, has_progress, poll_progress

if TYPE_CHECKING:
    pass


async def start(client: httpx.AsyncClient, items_count: int) -> str:
    response = await client.post("/start-task", params={"items_count": items_count})
    assert response.status_code == 200
    task_id: str = response.json()["task_id"]
    return task_id


async def test_progress_moves_item_by_item_to_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(progress_builtin, "simulate_work", gate)
    async with open_live_server(progress_builtin.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/start-task", params={"items_count": 3})
            assert response.status_code == 200
            task_id = response.json()["task_id"]
            assert re.fullmatch(r"\d+\.0", task_id)  # "<batch>.<index>"
            assert response.json() == {
                "message": f"Task {task_id} started",
                "task_id": task_id,
                "check_progress_url": f"/task-progress/{task_id}",
            }

            # The task waits at the gate in its first item: it has reported
            # its start, and nothing more.
            await gate.arrived.wait()
            running = (await client.get(f"/task-progress/{task_id}")).json()
            assert running == {
                "status": "running",
                "progress": 0,
                "total": 3,
                "message": "Starting task...",
                "error": None,
            }
            for item in (1, 2):
                gate.step()
                [*_, record] = await poll_progress(client, task_id, partial(has_progress, item))
                assert record == {
                    "status": "running",
                    "progress": item,
                    "total": 3,
                    "message": f"Processing item {item} of 3",
                    "error": None,
                }
            # The monitor mounted beside it shows the same task, live.
            page = await client.get("/admin/tasks/")
            snapshot = (await client.get("/admin/tasks/tasks")).json()
            gate.step()
            [*_, done] = await poll_progress(client, task_id, lambda r: r["status"] == "completed")
            monitored = (await client.get(f"/admin/tasks/tasks/{task_id}")).json()
        report = await server.shutdown()

    assert done == {
        "status": "completed",
        "progress": 3,
        "total": 3,
        "message": "Task completed successfully",
        "error": None,
    }
    assert gate.calls == [0.5, 0.5, 0.5]  # the seed's pace
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Background tasks</title>" in page.text
    [active] = snapshot["active"]
    assert (active["id"], active["name"], active["state"]) == (
        task_id,
        "long_running_task",
        "running",
    )
    assert active["request"] == "POST /start-task"
    assert active["progress"] == {"done": 2, "total": 3, "message": "Processing item 2 of 3"}
    assert monitored["state"] == "completed"
    assert monitored["progress"] == {
        "done": 3,
        "total": 3,
        "message": "Task completed successfully",
    }
    assert report.count("completed") == report.total == 1
    assert report.completed[0].id == task_id


def with_options(monkeypatch: pytest.MonkeyPatch, **options: Any) -> FastAPI:
    """The example app, its own middleware given ``options`` for this test.

    A second middleware around it would be refused at startup: middlewares
    never merge.
    """
    app = progress_builtin.app
    monkeypatch.setattr(app, "user_middleware", [Middleware(BackgroundTasksMiddleware, **options)])
    monkeypatch.setattr(app, "middleware_stack", None)
    return app


async def test_a_task_waiting_for_a_thread_has_no_progress_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    monkeypatch.setattr(progress_builtin, "simulate_work", gate)
    # One worker thread for sync tasks, taken by the first task at the gate: the
    # app's own middleware with that option (a second one around it would be
    # refused at startup: middlewares never merge).
    app = with_options(monkeypatch, thread_limit=1)
    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await start(client, 1)
            await gate.arrived.wait()
            second = await start(client, 1)
            waiting = (await client.get(f"/task-progress/{second}")).json()
            gate.open()
            await poll_progress(client, first, lambda r: r["status"] == "completed")
            await poll_progress(client, second, lambda r: r["status"] == "completed")
        report = await server.shutdown()

    assert waiting == {
        "status": "running",
        "progress": 0,
        "total": None,
        "message": None,
        "error": None,
    }
    assert report.count("completed") == report.total == 2


async def test_real_work_with_a_short_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_builtin, "SECONDS_PER_ITEM", 0.01)
    async with open_live_server(progress_builtin.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            task_id = await start(client, 5)
            seen = await poll_progress(client, task_id, lambda r: r["status"] == "completed")
        report = await server.shutdown()

    counts = [record["progress"] for record in seen]
    assert counts == sorted(counts)
    assert seen[-1] == {
        "status": "completed",
        "progress": 5,
        "total": 5,
        "message": "Task completed successfully",
        "error": None,
    }
    assert report.count("completed") == report.total == 1


async def test_a_failure_is_shown_and_recorded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    def failing_work(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(progress_builtin, "simulate_work", failing_work)
    async with open_live_server(progress_builtin.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            task_id = await start(client, 4)
            [*_, failed] = await poll_progress(client, task_id, lambda r: r["status"] == "failed")
        report = await server.shutdown()

    # The last progress it reported stays, beside the error.
    assert failed == {
        "status": "failed",
        "progress": 1,
        "total": 4,
        "message": "Processing item 1 of 4",
        "error": "OSError: disk full",
    }
    assert report.total == 1
    assert report.count("failed") == 1
    assert report.failed[0].error == "OSError: disk full"
    [logged] = [r for r in caplog.records if r.name == "trio_background" and r.exc_info]
    assert logged.levelno == logging.ERROR
    assert "long_running_task" in logged.getMessage()


async def test_old_records_are_dropped_and_then_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The supervisor keeps the most recent finished records (keep_records per
    # final state, 100 by default): here, one.
    monkeypatch.setattr(progress_builtin, "SECONDS_PER_ITEM", 0)
    app = with_options(monkeypatch, keep_records=1)
    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await start(client, 1)
            await poll_progress(client, first, lambda r: r["status"] == "completed")
            second = await start(client, 1)
            await poll_progress(client, second, lambda r: r["status"] == "completed")
            dropped = await client.get(f"/task-progress/{first}")
        report = await server.shutdown()

    assert dropped.status_code == 404
    assert dropped.json() == {"detail": "Task not found"}
    assert report.count("completed") == report.total == 2  # counts stay exact


async def test_unknown_ids_and_bad_counts_are_http_errors() -> None:
    async with open_live_server(progress_builtin.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            missing = await client.get("/task-progress/nope")
            unknown = await client.get("/task-progress/999.0")
            zero = await client.post("/start-task", params={"items_count": 0})
            none = await client.post("/start-task")
        report = await server.shutdown()

    for response in (missing, unknown):
        assert response.status_code == 404
        assert response.json() == {"detail": "Task not found"}
    assert zero.status_code == 422
    assert none.status_code == 422
    assert report.total == 0
