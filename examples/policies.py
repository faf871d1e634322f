"""Task policies and handles: welcome emails with retries, a limit and a key; a logged chat.

Beyond the seed (see ``docs/policies.rst``):

- ``POST /signup/{email}`` sends one welcome email per user. The task's
  policy (``@trio_background.task``) retries a transient SMTP failure (a
  4xx reply, or a server that cannot be reached) up to 3 more times, 0.5 s,
  1 s then 2 s apart; lets at most 5 sends run at once, across every request
  (a burst of signups cannot take every worker thread); and has a ``key``
  per address, so a second signup of the same address while its email is
  pending or being sent gets the same task back. Once an email went out the
  address is remembered, and a later signup sends none.
- ``GET /signup/{email}`` reads the welcome task's handle: its id, state,
  attempts, error, and result (the Message-ID of the email sent).
- ``/chat`` is a websocket that echoes what it receives; each session is
  written to SQLite by a task of the connection's batch, which runs once
  the connection closed.

Settings: the ``SMTP_*`` variables of ``examples/email_notify.py``, and
``CHAT_DB`` (the SQLite file of chat sessions, default ``chat.sqlite3``).

Run it against a local debugging server (``pip install aiosmtpd``)::

    python -m aiosmtpd -n -l 127.0.0.1:8025 &
    SMTP_PORT=8025 SMTP_STARTTLS=false SMTP_FROM=app@example.com \\
        python -m trio_background examples.policies:app

and from another shell::

    curl -X POST localhost:8000/signup/ada@example.com   # {"task_id": "1.0", ...}
    curl localhost:8000/signup/ada@example.com           # its state, attempts, result
"""

from __future__ import annotations

import logging
import os
import smtplib
import sqlite3
import ssl
from contextlib import closing
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect

import trio_background
from trio_background import BackgroundTask, BackgroundTasksMiddleware, TaskState, from_scope
from trio_background.fastapi import BackgroundTasks

from .email_notify import SmtpSettings

logger = logging.getLogger(__name__)

app = FastAPI(title="Task policies and handles")
app.add_middleware(BackgroundTasksMiddleware)


class TransientMailError(Exception):
    """The mail server said "try again later" (a 4xx reply), or could not be reached."""


class Welcomes:
    """Which addresses got their welcome email, and each one's latest welcome task.

    In memory, for the example; a real service keeps this with its users.
    Sync tasks run in worker threads: a set's ``add`` and a dict's item
    assignment are atomic, so no lock is needed here.
    """

    KEEP = 10_000
    """How many handles to keep (the oldest are dropped beyond that)."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.tasks: dict[str, BackgroundTask] = {}

    def track(self, email: str, task: BackgroundTask) -> None:
        self.tasks.pop(email, None)
        self.tasks[email] = task
        if len(self.tasks) > self.KEEP:
            del self.tasks[next(iter(self.tasks))]

    def clear(self) -> None:
        self.sent.clear()
        self.tasks.clear()


welcomes = Welcomes()


def welcome_key(email: str) -> str:
    """The policy's key: one welcome task per address while pending or being sent."""
    return f"welcome:{email}"


@trio_background.task(
    retries=3,
    retry_on=TransientMailError,
    backoff=0.5,
    max_backoff=4,
    timeout=60,
    limit=5,
    key=welcome_key,
)
def send_welcome(email: str) -> str:
    """Send the welcome email (in a worker thread); return its Message-ID.

    Raises:
        TransientMailError: The server answered 4xx or could not be reached
            (the policy retries it).
        smtplib.SMTPException: Any other refusal (not retried).
    """
    settings = SmtpSettings.from_env()
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = email
    message["Subject"] = "Welcome!"
    message["Message-ID"] = message_id = make_msgid(domain="example.com")
    message.set_content(f"Hello {email}, and welcome aboard.")
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as server:
            if settings.starttls:
                server.starttls(context=ssl.create_default_context())
            if settings.user is not None and settings.password is not None:
                server.login(settings.user, settings.password)
            server.send_message(message)
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            reply: bytes | str = exc.smtp_error
            text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
            raise TransientMailError(f"{exc.smtp_code} {text}") from exc
        raise
    except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
        raise TransientMailError(str(exc) or type(exc).__name__) from exc
    welcomes.sent.add(email)
    logger.info("welcome email sent to %s", email)
    return message_id


def _describe(task: BackgroundTask) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "state": task.state.value,
        "attempts": task.attempts,
        "error": None if task.error is None else f"{type(task.error).__name__}: {task.error}",
        # .result raises until the task completed: read it only then.
        "result": task.result if task.state is TaskState.COMPLETED else None,
    }


def _check_address(email: str) -> None:
    if "@" not in email or any(c in email for c in "\r\n"):
        raise HTTPException(status_code=422, detail="not an email address")


@app.post("/signup/{email}")
async def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, Any]:
    _check_address(email)
    if email in welcomes.sent:
        return {"task_id": None, "state": "sent already"}
    # With the policy's key, a signup of the same address while its email is
    # pending or being sent gets that task back: the id answered is the same.
    task = background_tasks.add_task(send_welcome, email)
    welcomes.track(email, task)
    return {"task_id": task.id, "state": task.state.value}


@app.get("/signup/{email}")
async def welcome_status(email: str) -> dict[str, Any]:
    task = welcomes.tasks.get(email)
    if task is None:
        raise HTTPException(status_code=404, detail="no welcome email for this address")
    return _describe(task)


# -- chat ---------------------------------------------------------------------

CHAT_DB = "chat.sqlite3"
"""The SQLite file of chat sessions (``CHAT_DB`` in the environment wins)."""


def log_chat_session(name: str, lines: list[str]) -> None:
    """Write one chat session to SQLite (a sync task: in a worker thread)."""
    path = os.environ.get("CHAT_DB") or CHAT_DB
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS chat_sessions"
            " (id INTEGER PRIMARY KEY, name TEXT NOT NULL, messages INTEGER NOT NULL,"
            " transcript TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO chat_sessions (name, messages, transcript) VALUES (?, ?, ?)",
            (name, len(lines), "\n".join(lines)),
        )


@app.websocket("/chat")
async def chat(websocket: WebSocket, name: str = "anonymous") -> None:
    await websocket.accept()
    lines: list[str] = []
    # A task of the connection's batch runs once the connection has closed:
    # by then ``lines`` holds the whole session.
    from_scope(websocket.scope).add_task(log_chat_session, name, lines)
    try:
        while True:
            text = await websocket.receive_text()
            lines.append(text)
            await websocket.send_text(f"{name}: {text}")
    except WebSocketDisconnect:
        pass
