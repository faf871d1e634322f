"""examples/dependency_injection.py end to end through real Hypercorn."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from examples import dependency_injection as di
from trio_background.testing import open_live_server

if TYPE_CHECKING:
    from collections.abc import Iterator


class RecordingEmailService(di.EmailService):
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.closed = False
        self.closed_when_used: list[bool] = []

    def send_email(self, to: str, subject: str, body: str) -> None:
        self.closed_when_used.append(self.closed)
        self.sent.append((to, subject, body))


class GatedDatabaseService(di.DatabaseService):
    """Records each call, and holds it until the test releases it."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, str]] = []
        self.arrived = trio.Event()
        self.release = trio.Event()

    def log_activity(self, user_id: int, action: str) -> None:
        trio.from_thread.run_sync(self.arrived.set)
        trio.from_thread.run(self.release.wait)
        self.logged.append((user_id, action))


async def post_action(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.post("/action/7", params={"action": "login"})


async def test_default_services(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_live_server(di.app) as server:
        response = await post_action(server.url)
        report = await server.shutdown()

    assert response.status_code == 200
    assert response.json() == {"message": "Action login performed for user 7"}
    assert report.count("completed") == report.total == 1
    assert report.completed[0].name == "notification_task"
    assert [r.getMessage() for r in caplog.records if r.name == di.__name__] == [
        "Logging: User 7 performed login",
        "Sending email to user7@example.com: Action Performed",
    ]


async def test_the_task_uses_the_injected_services(monkeypatch: pytest.MonkeyPatch) -> None:
    email = RecordingEmailService()
    database = GatedDatabaseService()
    monkeypatch.setitem(di.app.dependency_overrides, di.get_email_service, lambda: email)
    monkeypatch.setitem(di.app.dependency_overrides, di.get_database_service, lambda: database)
    async with open_live_server(di.app) as server:
        response = await post_action(server.url)
        assert response.status_code == 200

        # The client has its answer while the task is still using the services.
        await database.arrived.wait()
        assert email.sent == []
        assert server.supervisor.statistics().batches_running == 1

        database.release.set()
        report = await server.shutdown()

    assert report.count("completed") == report.total == 1
    assert database.logged == [(7, "login")]
    assert email.sent == [("user7@example.com", "Action Performed", "You performed: login")]


async def test_yield_dependencies_stay_open_while_the_task_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the example's docstring promises, shown: as in FastAPI >= 0.118."""
    email = RecordingEmailService()

    def email_with_cleanup() -> Iterator[di.EmailService]:
        yield email
        email.closed = True

    monkeypatch.setitem(di.app.dependency_overrides, di.get_email_service, email_with_cleanup)
    async with open_live_server(di.app) as server:
        response = await post_action(server.url)
        report = await server.shutdown()

    assert response.status_code == 200
    assert report.count("completed") == 1
    assert email.closed_when_used == [False]
    assert email.closed
