import os
import secrets

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

import trio_background
from trio_background import BackgroundTasksMiddleware


def admin_only(app: ASGIApp, token: str) -> ASGIApp:
    """Answer 401 to any request without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope["headers"]).get(b"authorization", b"")
        if token and secrets.compare_digest(given, expected):
            await app(scope, receive, send)
        else:
            refused = Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await refused(scope, receive, send)

    return guarded


app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)
app.mount("/admin/tasks", admin_only(trio_background.monitor(), os.environ["ADMIN_TOKEN"]))
