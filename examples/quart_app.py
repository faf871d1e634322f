"""Quart-trio with background tasks: a sign-up that sends its welcome after the response.

``BackgroundTasksExtension(app)`` installs the middleware; a view gets its
request's batch with ``background_tasks()``. The tasks run once the
response is complete, with copies of the request's app and request
contexts, so ``current_app``, ``g`` and ``request`` work inside them: the
async ``send_welcome`` runs in the request's task, the sync ``audit`` in a
worker thread.

Run it from the project's root (the two files are written to the current
directory)::

    python -m trio_background examples.quart_app:app

and from another shell::

    curl -X POST -d email=ada@example.com -H 'x-request-id: 42' localhost:8000/signup
    cat outbox.txt audit.txt
"""

from __future__ import annotations

from pathlib import Path

import trio
from quart import current_app, g, request
from quart_trio import QuartTrio

from trio_background.quart import BackgroundTasksExtension, background_tasks

app = QuartTrio(__name__)
app.config["OUTBOX"] = Path("outbox.txt")
app.config["AUDIT_LOG"] = Path("audit.txt")
app.config["WELCOME_FROM"] = "team@example.com"
BackgroundTasksExtension(app, drain_timeout=10)


@app.before_request
async def tag_request() -> None:
    g.request_id = request.headers.get("x-request-id", "-")


async def send_welcome(email: str) -> None:
    # Stands for the mail server's round trip; a real app would use an
    # AnyIO-based SMTP client here.
    await trio.sleep(0.01)
    line = f"from {current_app.config['WELCOME_FROM']} to {email}: welcome!\n"
    async with await trio.open_file(current_app.config["OUTBOX"], "a", encoding="utf-8") as out:
        await out.write(line)


def audit(email: str) -> None:
    # A sync task: it runs in a worker thread, which sees the same contexts.
    with current_app.config["AUDIT_LOG"].open("a", encoding="utf-8") as log:
        log.write(f"request {g.request_id} {request.method} {request.path}: {email} signed up\n")


@app.post("/signup")
async def signup() -> tuple[dict[str, str], int]:
    email = (await request.form)["email"]
    tasks = background_tasks()
    tasks.add_task(send_welcome, email)
    tasks.add_task(audit, email)
    return {"status": "signed up", "email": email}, 202
