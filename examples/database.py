"""Database writes in the background: SQLAlchemy 2 and SQLite, after the response.

The seed's database example on trio. The handler answers at once; two sync
tasks then run, in order, in worker threads: one writes an
``activity_logs`` row, the next reads the user's activity back (the seed's
placeholder for statistics).

What real use needs, and the seed lacks: SQLAlchemy 2's typed declarative
mapping (``declarative_base`` and ``datetime.utcnow`` are deprecated); the
database URL from the ``DATABASE_URL`` environment variable (or the module's
``DATABASE_URL`` attribute, read at startup); the engine made and the tables
created at lifespan startup, not at import, and disposed at shutdown (which
comes after the last task); timestamps in UTC, timezone-aware; and a failed
write rolls back and propagates, so the library logs it and records the task
as ``failed`` instead of a ``print``.

Run it::

    DATABASE_URL=sqlite:///./test.db python -m trio_background examples.database:app

and from another shell::

    curl -X POST 'localhost:8000/user/7/action?action=login'
    sqlite3 test.db 'select * from activity_logs'
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated

import trio
from fastapi import FastAPI, Query
from sqlalchemy import DateTime, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

logger = logging.getLogger(__name__)

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./test.db")
"""The database; read when the app starts."""


class Base(DeclarativeBase):
    pass


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ActivityLog(Base):
    __tablename__ = "activity_logs"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(200))
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utc_now)


# Bound to an engine at startup. Sessions are made and closed in the worker
# thread that runs each task; the engine's pool is thread-safe.
SessionLocal = sessionmaker(autoflush=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    engine = create_engine(DATABASE_URL)
    await trio.to_thread.run_sync(Base.metadata.create_all, engine)
    SessionLocal.configure(bind=engine)
    try:
        yield
    finally:
        # Lifespan shutdown comes after the last background task has ended.
        engine.dispose()


app = FastAPI(title="Database writes in the background", lifespan=lifespan)
app.add_middleware(BackgroundTasksMiddleware)


def log_user_activity(user_id: int, action: str) -> None:
    # begin() commits at the end of the block, or rolls back if it raises;
    # what it raises reaches the library, which logs it.
    with SessionLocal() as db, db.begin():
        db.add(ActivityLog(user_id=user_id, action=action))
    logger.info("Logged activity: User %d performed %s", user_id, action)


def update_user_statistics(user_id: int) -> None:
    # A placeholder for complex statistical calculations: it reads what the
    # task before it wrote (tasks of a batch run in order).
    with SessionLocal() as db:
        count = db.scalar(
            select(func.count()).select_from(ActivityLog).where(ActivityLog.user_id == user_id)
        )
    logger.info("Updated statistics for user %d: %d actions", user_id, count or 0)


@app.post("/user/{user_id}/action")
async def perform_user_action(
    user_id: int,
    action: Annotated[str, Query(min_length=1, max_length=200)],
    background_tasks: BackgroundTasks,
) -> dict[str, str]:
    # Log the activity in background
    background_tasks.add_task(log_user_activity, user_id, action)

    # Update user statistics in background
    background_tasks.add_task(update_user_statistics, user_id)

    return {"message": f"Action '{action}' recorded for user {user_id}"}
