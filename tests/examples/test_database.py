"""examples/database.py end to end: real Hypercorn, SQLAlchemy 2 and a SQLite file."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from examples import database
from trio_background.testing import open_live_server


def read_activity(path: Path) -> list[tuple[int, int, str, datetime]]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with Session(engine) as db:
            rows = db.scalars(select(database.ActivityLog).order_by(database.ActivityLog.id))
            return [(r.id, r.user_id, r.action, r.timestamp) for r in rows]
    finally:
        engine.dispose()


def utc_now() -> datetime:
    # SQLite keeps the UTC time the example wrote, without the zone.
    return datetime.now(timezone.utc).replace(tzinfo=None)


async def test_activity_row_is_written_after_the_response(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    db_path = tmp_path / "test.db"
    monkeypatch.setattr(database, "DATABASE_URL", f"sqlite:///{db_path}")
    before = utc_now()
    async with open_live_server(database.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await client.post("/user/7/action", params={"action": "login"})
            second = await client.post("/user/8/action", params={"action": "upload"})
        report = await server.shutdown()
    after = utc_now()

    assert first.status_code == 200
    assert first.json() == {"message": "Action 'login' recorded for user 7"}
    assert second.status_code == 200
    assert report.total == 4
    assert report.count("completed") == 4
    by_request = {
        request: [r.name for r in report.completed if r.request == request]
        for request in ("POST /user/7/action", "POST /user/8/action")
    }
    assert by_request == {
        "POST /user/7/action": ["log_user_activity", "update_user_statistics"],
        "POST /user/8/action": ["log_user_activity", "update_user_statistics"],
    }

    rows = read_activity(db_path)
    assert sorted((user_id, action) for _, user_id, action, _ in rows) == [
        (7, "login"),
        (8, "upload"),
    ]
    for _, _, _, timestamp in rows:
        assert before <= timestamp <= after
    # Each batch's second task saw the row its first task committed.
    messages = {r.getMessage() for r in caplog.records if r.name == "examples.database"}
    assert messages == {
        "Logged activity: User 7 performed login",
        "Logged activity: User 8 performed upload",
        "Updated statistics for user 7: 1 actions",
        "Updated statistics for user 8: 1 actions",
    }


async def test_invalid_action_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_path = tmp_path / "test.db"
    monkeypatch.setattr(database, "DATABASE_URL", f"sqlite:///{db_path}")
    async with open_live_server(database.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/user/7/action", params={"action": "x" * 201})
        report = await server.shutdown()

    assert response.status_code == 422
    assert report.total == 0
    assert read_activity(db_path) == []
