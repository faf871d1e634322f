import contextvars
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdMiddleware:
    """Sets request_id for everything the request runs, its tasks included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            # No reset afterwards: the batch runs after this call returns.
            request_id.set(headers.get(b"x-request-id", b"-").decode())
        await self.app(scope, receive, send)


app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)
app.add_middleware(RequestIdMiddleware)

audit_log: list[str] = []


def audit(action: str) -> None:
    # A sync task: its thread gets a copy of the request's context.
    audit_log.append(f"[{request_id.get()}] {action}")


@app.delete("/items/{item_id}")
async def delete_item(item_id: int, background_tasks: BackgroundTasks) -> None:
    background_tasks.add_task(audit, f"deleted item {item_id}")
