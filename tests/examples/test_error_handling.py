"""examples/error_handling.py end to end through real Hypercorn."""

from __future__ import annotations

import logging

import httpx
import pytest

from examples import error_handling
from trio_background.testing import open_live_server


def example_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "examples.error_handling"
    ]


async def test_both_tasks_complete(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_live_server(error_handling.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/safe-task/7", params={"message": "hello"})
        report = await server.shutdown()

    assert response.status_code == 200
    assert response.json() == {"message": "Tasks scheduled with error handling"}
    assert report.count("completed") == report.total == 2
    assert example_log(caplog) == [
        (logging.INFO, "Starting background task: send_notification"),
        (logging.INFO, "Notification sent to user 7: hello"),
        (logging.INFO, "Completed background task: send_notification"),
        (logging.INFO, "Starting background task: cleanup"),
        (logging.INFO, "Cleanup completed"),
        (logging.INFO, "Completed background task: cleanup"),
    ]


async def test_a_failure_is_logged_recorded_and_the_next_task_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with open_live_server(error_handling.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/safe-task/0", params={"message": "hello"})
        report = await server.shutdown()

    # The client's answer does not depend on the tasks.
    assert response.status_code == 200
    assert report.total == 2
    assert report.count("failed") == 1
    assert report.count("completed") == 1
    [failed] = report.failed
    assert (failed.name, failed.index) == ("safe_background_task", 0)
    assert failed.error == "ValueError: User ID is required"
    assert failed.request == "POST /safe-task/0"
    assert report.completed[0].index == 1
    # The wrapper's log lines, as in the seed; cleanup still ran.
    assert example_log(caplog) == [
        (logging.INFO, "Starting background task: send_notification"),
        (logging.ERROR, "Background task send_notification failed: User ID is required"),
        (logging.INFO, "Starting background task: cleanup"),
        (logging.INFO, "Cleanup completed"),
        (logging.INFO, "Completed background task: cleanup"),
    ]
    # And the library's own record of it, with the traceback.
    [logged] = [r for r in caplog.records if r.name == "trio_background" and r.exc_info]
    assert logged.levelno == logging.ERROR
    assert "safe_background_task" in logged.getMessage()
    assert "POST /safe-task/0" in logged.getMessage()


def test_unknown_task_names_fail() -> None:
    with pytest.raises(ValueError, match=r"^Unknown task: nothing$"):
        error_handling.safe_background_task("nothing")
    error_handling.safe_background_task("process_data", 5)
    with pytest.raises(ValueError, match=r"^Invalid data ID$"):
        error_handling.safe_background_task("process_data", 0)
