"""examples/progress.py end to end through real Hypercorn.

Polling the progress endpoint is the feature under test, so these tests poll
it, with a short pause between polls and a bound on the whole.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import httpx
import pytest

from examples import progress
from trio_background.testing import open_live_server

from .helpers import Gate, has_progress, poll_progress

if TYPE_CHECKING:
    pass


@pytest.fixture(autouse=True)
def fresh_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "task_progress", {})


async def test_progress_moves_item_by_item_to_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(progress, "simulate_work", gate)
    async with open_live_server(progress.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/start-task/job1", params={"items_count": 3})
            assert response.status_code == 200
            assert response.json() == {
                "message": "Task job1 started",
                "task_id": "job1",
                "check_progress_url": "/task-progress/job1",
            }

            # The id is known from the response on, before the task has done
            # anything, and it cannot be taken twice.
            first = (await client.get("/task-progress/job1")).json()
            assert first["status"] in {"pending", "running"}
            assert (first["progress"], first["total"]) == (0, 3)
            again = await client.post("/start-task/job1", params={"items_count": 5})
            assert again.status_code == 409
            assert again.json() == {"detail": "Task with this ID already exists"}

            await gate.arrived.wait()
            running = (await client.get("/task-progress/job1")).json()
            assert running == {
                "status": "running",
                "progress": 0,
                "total": 3,
                "message": "Starting task...",
            }
            for item in (1, 2):
                gate.step()
                [*_, record] = await poll_progress(client, "job1", partial(has_progress, item))
                assert record == {
                    "status": "running",
                    "progress": item,
                    "total": 3,
                    "message": f"Processing item {item} of 3",
                }
            gate.step()
            [*_, done] = await poll_progress(client, "job1", lambda r: r["status"] == "completed")
        report = await server.shutdown()

    assert done == {
        "status": "completed",
        "progress": 3,
        "total": 3,
        "message": "Task completed successfully",
    }
    assert gate.calls == [0.5, 0.5, 0.5]  # the seed's pace
    assert report.count("completed") == report.total == 1  # the duplicate added no task


async def test_real_work_with_a_short_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "SECONDS_PER_ITEM", 0.01)
    async with open_live_server(progress.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/start-task/job2", params={"items_count": 5})
            assert response.status_code == 200
            seen = await poll_progress(client, "job2", lambda r: r["status"] == "completed")
        report = await server.shutdown()

    counts = [record["progress"] for record in seen]
    assert counts == sorted(counts)
    assert seen[-1] == {
        "status": "completed",
        "progress": 5,
        "total": 5,
        "message": "Task completed successfully",
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

    monkeypatch.setattr(progress, "simulate_work", failing_work)
    async with open_live_server(progress.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/start-task/job3", params={"items_count": 4})
            assert response.status_code == 200
            [*_, failed] = await poll_progress(client, "job3", lambda r: r["status"] == "failed")
        report = await server.shutdown()

    assert failed == {
        "status": "failed",
        "progress": 1,
        "total": 4,
        "message": "Task failed: disk full",
    }
    assert report.total == 1
    assert report.count("failed") == 1
    assert report.failed[0].error == "OSError: disk full"
    [logged] = [r for r in caplog.records if r.name == "trio_background" and r.exc_info]
    assert logged.levelno == logging.ERROR
    assert "long_running_task" in logged.getMessage()


async def test_unknown_ids_and_bad_counts_are_http_errors() -> None:
    async with open_live_server(progress.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            missing = await client.get("/task-progress/nope")
            zero = await client.post("/start-task/job4", params={"items_count": 0})
        report = await server.shutdown()

    assert missing.status_code == 404
    assert missing.json() == {"detail": "Task not found"}
    assert zero.status_code == 422
    assert progress.task_progress == {}
    assert report.total == 0
