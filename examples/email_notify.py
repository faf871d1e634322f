"""Email sending in the background: the SMTP conversation runs after the response.

The seed's email example on trio. ``send_email`` is the seed's blocking
``smtplib`` code, run by the library in a worker thread, with what real use
needs: the SMTP settings come from the environment (no password in the
code), STARTTLS verifies the server's certificate, the connection has a
timeout, and a failure is not swallowed by a ``print``: it propagates, so the
library logs it with its traceback and records the task as ``failed``.
(The module is not named ``email.py``: that would shadow the standard
library's ``email`` package.)

Settings, read when each mail is sent:

========================  ==============================================
``SMTP_HOST``             server name (default ``localhost``)
``SMTP_PORT``             port (default ``587``)
``SMTP_STARTTLS``         ``true``/``false``: upgrade with STARTTLS (default true)
``SMTP_USER``             log in as this user (default: no login)
``SMTP_PASSWORD``         the password (required with ``SMTP_USER``)
``SMTP_FROM``             sender address (default: ``SMTP_USER``)
``SMTP_TIMEOUT``          seconds for the connection and each reply (default 30)
========================  ==============================================

Run it against a local debugging server (``pip install aiosmtpd``)::

    python -m aiosmtpd -n -l 127.0.0.1:8025 &
    SMTP_PORT=8025 SMTP_STARTTLS=false SMTP_FROM=app@example.com \\
        python -m trio_background examples.email_notify:app

and from another shell::

    curl -X POST 'localhost:8000/send-email/?to_email=ada@example.com&subject=Hi&body=Hello'
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from fastapi import FastAPI, HTTPException

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

logger = logging.getLogger(__name__)

app = FastAPI(title="Email in the background")
app.add_middleware(BackgroundTasksMiddleware)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (or 1/0, yes/no, on/off), got {value!r}")


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send mail; see the module's docstring for the variables."""

    host: str
    port: int
    starttls: bool
    user: str | None
    password: str | None
    sender: str
    timeout: float

    @classmethod
    def from_env(cls) -> SmtpSettings:
        """Read the ``SMTP_*`` environment variables.

        Raises:
            ValueError: A variable is malformed, ``SMTP_USER`` is set without
                ``SMTP_PASSWORD``, or there is no sender address.
        """
        user = os.environ.get("SMTP_USER") or None
        password = os.environ.get("SMTP_PASSWORD") or None
        if user is not None and password is None:
            raise ValueError("SMTP_USER is set but SMTP_PASSWORD is not: set both, or neither")
        sender = os.environ.get("SMTP_FROM") or user
        if sender is None:
            raise ValueError("set SMTP_FROM (or SMTP_USER) to the sender's address")
        return cls(
            host=os.environ.get("SMTP_HOST") or "localhost",
            port=int(os.environ.get("SMTP_PORT") or 587),
            starttls=_env_flag("SMTP_STARTTLS", default=True),
            user=user,
            password=password,
            sender=sender,
            timeout=float(os.environ.get("SMTP_TIMEOUT") or 30),
        )


def send_email(to_email: str, subject: str, body: str) -> None:
    """Send one plain-text mail; raises if it could not be sent."""
    settings = SmtpSettings.from_env()

    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to_email
    message["Subject"] = subject
    message.set_content(body)

    with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as server:
        if settings.starttls:
            # The seed's bare starttls() does not check the certificate.
            server.starttls(context=ssl.create_default_context())
        if settings.user is not None and settings.password is not None:
            server.login(settings.user, settings.password)
        server.send_message(message)

    logger.info("Email sent successfully to %s", to_email)


def _one_line(name: str, value: str) -> None:
    # A line break in a header would let a caller add headers (Bcc: ...).
    if "\r" in value or "\n" in value:
        raise HTTPException(status_code=422, detail=f"{name} must be a single line")


@app.post("/send-email/")
async def send_email_endpoint(
    to_email: str, subject: str, body: str, background_tasks: BackgroundTasks
) -> dict[str, str]:
    _one_line("to_email", to_email)
    _one_line("subject", subject)
    if "@" not in to_email:
        raise HTTPException(status_code=422, detail="to_email must be an email address")
    background_tasks.add_task(send_email, to_email, subject, body)
    return {"message": "Email will be sent in the background"}
