"""examples/policies.py end to end: real Hypercorn, a real SMTP server, a real websocket client.

The SMTP server is aiosmtpd on a free port of 127.0.0.1 (its asyncio loop in
a thread of its own); its handler counts the sends in progress, can refuse
the first ones with a 4xx reply, and can hold every send until the test
lets them through. The websocket client is wsproto over a trio socket
(``helpers.websocket_session``).
The retry waits are the example's own (0.5 s), in real time: real SMTP
needs it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from examples import policies
from trio_background.testing import open_live_server

from .helpers import serve_smtp, use_smtp_server, websocket_session

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Iterator
    from email.message import EmailMessage
    from pathlib import Path

    from aiosmtpd.smtp import SMTP, Envelope, Session

BURST = 12


class Relay:
    """An aiosmtpd handler that counts the sends in progress (in DATA) and keeps the mail.

    The first ``refuse`` DATA commands are answered ``refusal`` (451: try
    again later). While :meth:`hold` is on, each DATA waits (without
    blocking the server's loop) until :meth:`open`. The test reads
    ``sending`` and waits for it through :meth:`until_sending`.
    """

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.refuse = 0
        self.refusal = "451 4.3.0 Try again later"
        self.refused = 0
        self.sending = 0
        self.most = 0
        self.messages: list[EmailMessage] = []
        self._gate: asyncio.Event | None = None
        self._changed = trio.Event()

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def open(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(gate.set)

    async def until_sending(self, count: int) -> None:
        while self.sending < count:
            await self._changed.wait()

    def _count(self, step: int) -> None:  # in trio, called from the SMTP thread
        self.sending += step
        self.most = max(self.most, self.sending)
        self._changed.set()
        self._changed = trio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        trio.from_thread.run_sync(self._count, 1, trio_token=self.token)
        try:
            if self.refused < self.refuse:
                self.refused += 1
                return self.refusal
            gate = self._gate
            if gate is not None:
                await gate.wait()
            assert isinstance(envelope.content, bytes)
            message: Any = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)
            return "250 Message accepted for delivery"
        finally:
            # Before the reply reaches the client: the task still holds its slot.
            trio.from_thread.run_sync(self._count, -1, trio_token=self.token)


@pytest.fixture(autouse=True)
def _fresh_welcomes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CHAT_DB", str(tmp_path / "chat.sqlite3"))
    policies.welcomes.clear()
    yield
    policies.welcomes.clear()


@pytest.fixture
async def relay(monkeypatch: pytest.MonkeyPatch) -> AsyncGenerator[Relay, None]:
    handler = Relay()
    async with serve_smtp(handler) as (loop, port):
        handler.loop = loop
        use_smtp_server(monkeypatch, port)
        try:
            yield handler
        finally:
            handler.open()


def recipients(relay: Relay) -> list[str]:
    return sorted(str(m["To"]) for m in relay.messages)


async def test_a_second_signup_while_the_first_is_pending_gets_the_same_task(
    relay: Relay,
) -> None:
    relay.hold()
    async with open_live_server(policies.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = (await client.post("/signup/ada@example.com")).json()
            await relay.until_sending(1)
            again = (await client.post("/signup/ada@example.com")).json()
            running = (await client.get("/signup/ada@example.com")).json()
            relay.open()
            await server.supervisor.wait_idle()
            done = (await client.get("/signup/ada@example.com")).json()
            later = (await client.post("/signup/ada@example.com")).json()
        report = await server.shutdown()

    assert first["task_id"] is not None
    assert again == {"task_id": first["task_id"], "state": "running"}
    assert running["state"] == "running"
    [message] = relay.messages
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome!"
    assert done == {
        "task_id": first["task_id"],
        "state": "completed",
        "attempts": 1,
        "error": None,
        "result": message["Message-ID"],
    }
    # Sent once: a later signup sends none.
    assert later == {"task_id": None, "state": "sent already"}
    assert report.total == report.count("completed") == 1


async def test_a_transient_smtp_failure_is_retried_and_the_email_arrives_once(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    relay.refuse = 1
    async with open_live_server(policies.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            task_id = (await client.post("/signup/bob@example.com")).json()["task_id"]
            await server.supervisor.wait_idle()
            status = (await client.get("/signup/bob@example.com")).json()
        report = await server.shutdown()

    assert relay.refused == 1
    assert recipients(relay) == ["bob@example.com"]
    assert status["task_id"] == task_id
    assert (status["state"], status["attempts"], status["error"]) == ("completed", 2, None)
    [record] = report.completed
    assert (record.name, record.attempts) == ("send_welcome", 2)
    [retrying] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_background" and r.levelno == logging.WARNING
    ]
    assert "failed on attempt 1 of 4" in retrying
    assert "retrying in 0.5s: TransientMailError: 451 4.3.0 Try again later" in retrying


async def test_a_permanent_refusal_is_not_retried(relay: Relay) -> None:
    relay.refuse, relay.refusal = 1, "554 5.7.1 Rejected"
    async with open_live_server(policies.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.post("/signup/eve@example.com")
            await server.supervisor.wait_idle()
            status = (await client.get("/signup/eve@example.com")).json()
            retry = (await client.post("/signup/eve@example.com")).json()
        report = await server.shutdown()

    assert status["state"] == "failed"
    assert status["attempts"] == 1
    assert status["error"].startswith("SMTPDataError: (554, b'5.7.1 Rejected')")
    # Not sent: a new signup tries again, as a new task.
    assert retry["task_id"] not in (None, status["task_id"])
    assert report.count("failed") == 1


async def test_never_more_than_five_sends_at_once_under_a_burst(relay: Relay) -> None:
    relay.hold()
    addresses = [f"user{n}@example.com" for n in range(BURST)]
    async with open_live_server(policies.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            ids = [(await client.post(f"/signup/{a}")).json()["task_id"] for a in addresses]
            await relay.until_sending(5)
            states = [(await client.get(f"/signup/{a}")).json()["state"] for a in addresses]
            relay.open()
            await server.supervisor.wait_idle()
            done = [(await client.get(f"/signup/{a}")).json()["state"] for a in addresses]
        report = await server.shutdown()

    assert len(set(ids)) == BURST
    # Five hold a slot (in DATA); the other seven wait for one, not started.
    assert sorted(states) == ["pending"] * 7 + ["running"] * 5
    assert relay.most == 5
    assert done == ["completed"] * BURST
    assert recipients(relay) == sorted(addresses)
    assert report.count("completed") == BURST


# -- chat -----------------------------------------------------------------------


async def chat_session(
    url: str, name: str, lines: list[str], *, before_close: Callable[[], None] = lambda: None
) -> list[str]:
    """Open ``/chat``, say ``lines``, call ``before_close``, close; return the answers."""
    return await websocket_session(url, f"/chat?name={name}", lines, before_close=before_close)


def logged_sessions(path: Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as db:
        rows: list[tuple[str, int, str]] = db.execute(
            "SELECT name, messages, transcript FROM chat_sessions ORDER BY name"
        ).fetchall()
    return rows


async def test_a_chat_session_is_logged_after_the_websocket_closed(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    seen_while_open: list[list[tuple[str, int, str]]] = []

    async with open_live_server(policies.app) as server:
        ada = await chat_session(
            server.url,
            "ada",
            ["hello", "bye"],
            # The session is open: its log task has not run.
            before_close=lambda: seen_while_open.append(logged_sessions(path)),
        )
        bob = await chat_session(server.url, "bob", ["hi"])
        await server.supervisor.wait_idle()
        report = await server.shutdown()

    assert ada == ["ada: hello", "ada: bye"]
    assert bob == ["bob: hi"]
    assert seen_while_open == [[]]
    assert logged_sessions(path) == [("ada", 2, "hello\nbye"), ("bob", 1, "hi")]
    assert [(r.name, r.request) for r in report.completed] == [
        ("log_chat_session", "WEBSOCKET /chat"),
        ("log_chat_session", "WEBSOCKET /chat"),
    ]
