"""examples/multiple.py end to end through real Hypercorn."""

from __future__ import annotations

import logging
from itertools import pairwise

import httpx
import pytest

from examples import multiple
from trio_background.testing import open_live_server

from .helpers import Gate


def example_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "examples.multiple"]


async def test_tasks_run_in_order_after_the_response(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    monkeypatch.setattr(multiple, "simulate_work", gate)
    async with open_live_server(multiple.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/process/ada")
        assert response.status_code == 200
        assert response.json() == {"message": "Processing started for ada"}

        # The client has its answer while task 1 is still working.
        await gate.arrived.wait()
        assert example_log(caplog) == []
        assert server.supervisor.statistics().batches_running == 1

        gate.open()
        report = await server.shutdown()

    assert report.total == 3
    assert report.count("completed") == 3
    assert [r.name for r in report.completed] == ["slow_task_1", "slow_task_2", "cleanup_task"]
    assert [r.index for r in report.completed] == [0, 1, 2]
    for before, after in pairwise(report.completed):
        assert before.ended_at is not None
        assert after.started_at is not None
        assert before.ended_at <= after.started_at
    # The seed's durations are what the tasks asked for.
    assert gate.calls == [2.0, 3.0]
    assert example_log(caplog) == [
        "Task 1 completed for ada",
        "Task 2 completed for ada",
        "Cleanup completed",
    ]


async def test_real_sleeps_with_short_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(multiple, "TASK_1_SECONDS", 0.01)
    monkeypatch.setattr(multiple, "TASK_2_SECONDS", 0.01)
    async with open_live_server(multiple.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/process/alan")
        report = await server.shutdown()

    assert response.status_code == 200
    assert report.count("completed") == report.total == 3
    assert example_log(caplog) == [
        "Task 1 completed for alan",
        "Task 2 completed for alan",
        "Cleanup completed",
    ]
