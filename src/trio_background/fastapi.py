"""FastAPI integration: the ``BackgroundTasks`` dependency type.

Swap one import and keep the handler as it was::

    from fastapi import FastAPI
    from trio_background import BackgroundTasksMiddleware
    from trio_background.fastapi import BackgroundTasks

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/send-notification/{email}")
    async def send_notification(email: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(write_notification, email, message="some notification")
        return {"message": "Notification sent in the background"}

``BackgroundTasks`` here is ``Annotated[trio_background.BackgroundTasks,
Depends(...)]``: the handler gets the request's batch, which the middleware
runs after the response. As in FastAPI, tasks added by a handler that raises
(``HTTPException`` included) do not run: they end ``skipped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection  # noqa: TC002 - FastAPI reads it at runtime

from ._middleware import from_scope
from ._tasks import BackgroundTasks as _BackgroundTasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["BackgroundTasks", "get_background_tasks"]


async def get_background_tasks(connection: HTTPConnection) -> AsyncIterator[_BackgroundTasks]:
    """FastAPI dependency: the request's batch.

    An ``async def`` generator, so FastAPI calls it without a thread hop,
    and sees the handler's exception to discard the batch.

    Raises:
        RuntimeError: BackgroundTasksMiddleware is not installed (the message
            says how to install it).
    """
    batch = from_scope(connection.scope)
    try:
        yield batch
    except BaseException as exc:
        batch.discard(f"the handler raised {type(exc).__qualname__}")
        raise


BackgroundTasks = Annotated[_BackgroundTasks, Depends(get_background_tasks)]
"""A handler parameter typed ``BackgroundTasks`` receives the request's batch."""
