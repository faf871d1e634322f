"""examples/email_notify.py end to end: real Hypercorn, and a real SMTP server (aiosmtpd).

aiosmtpd runs its asyncio loop in a thread of its own, on a free port of
127.0.0.1; the example's ``smtplib`` code talks to it from the worker thread
that runs the task.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
from aiosmtpd.smtp import AuthResult, LoginPassword

from examples import email_notify
from trio_background.testing import open_live_server

from .helpers import serve_smtp, use_smtp_server

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from email.message import EmailMessage

    from aiosmtpd.smtp import SMTP, Envelope, Session


class Mailbox:
    """An aiosmtpd handler that keeps what it receives.

    With :meth:`hold`, the next DATA command waits (without blocking the SMTP
    server's loop) until :meth:`release`: the mail is on its way but not yet
    accepted, so the task that sends it is still running.
    """

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.mail_from: list[str] = []
        self.rcpt_tos: list[list[str]] = []
        self.messages: list[EmailMessage] = []
        self.arrived = trio.Event()
        self._held: asyncio.Event | None = None

    def hold(self) -> None:
        self._held = asyncio.Event()

    def release(self) -> None:
        held = self._held
        if held is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(held.set)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        trio.from_thread.run_sync(self.arrived.set, trio_token=self.token)
        if self._held is not None:
            await self._held.wait()
        assert isinstance(envelope.content, bytes)
        assert envelope.mail_from is not None
        message: Any = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mail_from.append(envelope.mail_from)
        self.rcpt_tos.append(list(envelope.rcpt_tos))
        self.messages.append(message)
        return "250 Message accepted for delivery"


def body_text(message: EmailMessage) -> str:
    """The body as the sender wrote it (SMTP carries it with CRLF line ends)."""
    content: str = message.get_content()
    return content.replace("\r\n", "\n")


@asynccontextmanager
async def open_smtp_server(**smtp_options: Any) -> AsyncGenerator[tuple[Mailbox, int], None]:
    mailbox = Mailbox()
    async with serve_smtp(mailbox, **smtp_options) as (loop, port):
        mailbox.loop = loop
        try:
            yield mailbox, port
        finally:
            mailbox.release()


async def test_mail_is_sent_after_the_response(monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_smtp_server() as (mailbox, port):
        use_smtp_server(monkeypatch, port)
        mailbox.hold()
        async with open_live_server(email_notify.app) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                response = await client.post(
                    "/send-email/",
                    params={"to_email": "ada@example.com", "subject": "Hi", "body": "Hello, Ada"},
                )
            assert response.status_code == 200
            assert response.json() == {"message": "Email will be sent in the background"}

            # The client has its answer while the mail is still being delivered.
            await mailbox.arrived.wait()
            assert mailbox.messages == []
            assert server.supervisor.statistics().batches_running == 1

            mailbox.release()
            report = await server.shutdown()

    assert report.total == 1
    assert report.count("completed") == 1
    assert report.completed[0].name == "send_email"
    assert mailbox.mail_from == ["app@example.com"]
    assert mailbox.rcpt_tos == [["ada@example.com"]]
    [message] = mailbox.messages
    assert message["From"] == "app@example.com"
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Hi"
    assert body_text(message) == "Hello, Ada\n"


async def test_login_with_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    async with open_smtp_server(authenticator=authenticator, auth_require_tls=False) as (
        mailbox,
        port,
    ):
        use_smtp_server(monkeypatch, port)
        monkeypatch.setenv("SMTP_USER", "mailer@example.com")
        monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
        monkeypatch.delenv("SMTP_FROM")  # the sender defaults to SMTP_USER
        async with open_live_server(email_notify.app) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                response = await client.post(
                    "/send-email/",
                    params={"to_email": "alan@example.com", "subject": "Report", "body": "Done."},
                )
            report = await server.shutdown()

    assert response.status_code == 200
    assert report.count("completed") == report.total == 1
    assert logins == [(b"mailer@example.com", b"s3cret")]
    [message] = mailbox.messages
    assert message["From"] == "mailer@example.com"
    assert message["To"] == "alan@example.com"
    assert message["Subject"] == "Report"
    assert body_text(message) == "Done.\n"


async def test_a_failed_send_is_logged_and_recorded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_smtp_server() as (mailbox, port):
        # STARTTLS is on by default, and this server does not offer it.
        use_smtp_server(monkeypatch, port, starttls=True)
        async with open_live_server(email_notify.app) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                response = await client.post(
                    "/send-email/",
                    params={"to_email": "ada@example.com", "subject": "Hi", "body": "Hello"},
                )
            report = await server.shutdown()

    assert response.status_code == 200
    assert report.total == 1
    assert report.count("failed") == 1
    [failed] = report.failed
    assert failed.name == "send_email"
    assert failed.request == "POST /send-email/"
    assert failed.error is not None
    assert failed.error.startswith("SMTPNotSupportedError: STARTTLS extension not supported")
    [logged] = [r for r in caplog.records if r.name == "trio_background" and r.exc_info]
    assert "send_email" in logged.getMessage()
    assert logged.levelno == logging.ERROR
    assert mailbox.messages == []


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        pytest.param(
            "subject",
            "Hi\r\nBcc: everyone@example.com",
            "subject must be a single line",
            id="subject-injection",
        ),
        pytest.param(
            "to_email",
            "ada@example.com\nBcc: x@y",
            "to_email must be a single line",
            id="to-injection",
        ),
        pytest.param(
            "to_email", "ada", "to_email must be an email address", id="to-not-an-address"
        ),
    ],
)
async def test_bad_fields_are_refused(field: str, value: str, detail: str) -> None:
    params = {"to_email": "ada@example.com", "subject": "Hi", "body": "Hello", field: value}
    async with open_live_server(email_notify.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/send-email/", params=params)
        report = await server.shutdown()

    assert response.status_code == 422
    assert response.json() == {"detail": detail}
    assert report.total == 0  # no task was added


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SMTP_HOST", "SMTP_PORT", "SMTP_STARTTLS", "SMTP_TIMEOUT", "SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMTP_USER", "me@example.com")
    monkeypatch.setenv("SMTP_FROM", "")
    with pytest.raises(ValueError, match=r"^SMTP_USER is set but SMTP_PASSWORD is not"):
        email_notify.SmtpSettings.from_env()
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    assert email_notify.SmtpSettings.from_env() == email_notify.SmtpSettings(
        host="localhost",
        port=587,
        starttls=True,
        user="me@example.com",
        password="pw",
        sender="me@example.com",
        timeout=30.0,
    )
    monkeypatch.setenv("SMTP_STARTTLS", "maybe")
    with pytest.raises(ValueError, match=r"^SMTP_STARTTLS must be true or false"):
        email_notify.SmtpSettings.from_env()
