from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from trio_background import BackgroundTasksMiddleware, from_scope

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

visits: list[str] = []


async def count_visit(path: str) -> None:
    await trio.sleep(0.5)
    visits.append(path)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        # Lifespan included: the middleware answers it when the app refuses.
        raise RuntimeError(f"hello only speaks HTTP, not {scope['type']}")
    from_scope(scope).add_task(count_visit, scope["path"])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello\n"})


app = BackgroundTasksMiddleware(hello, drain_timeout=20)
