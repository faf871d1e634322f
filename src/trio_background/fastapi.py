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
    from types import TracebackType

__all__ = ["BackgroundTasks", "get_background_tasks"]

# FastAPI opens these exit stacks around each endpoint call (the first around
# the call alone, since FastAPI 0.118; the second also around sending the
# response). An exit callback there sees what the handler raised.
_ENDPOINT_STACKS = ("fastapi_function_astack", "fastapi_inner_astack")


class _DiscardOnError:
    """An ``__exit__``-style callback: a handler that raised loses its batch."""

    __slots__ = ("_batch",)

    def __init__(self, batch: _BackgroundTasks) -> None:
        self._batch = batch

    def __call__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc_type is not None:
            self._batch.discard(f"the handler raised {exc_type.__qualname__}")
        return False


async def get_background_tasks(connection: HTTPConnection) -> _BackgroundTasks:
    """FastAPI dependency: the request's batch.

    A plain ``async def`` (no thread hop, and no generator dependency, whose
    exit stack costs more than the rest of the library per request). To
    skip the tasks of a handler that raises, it leaves a callback on the exit
    stack FastAPI already keeps around the endpoint call.

    Raises:
        RuntimeError: BackgroundTasksMiddleware is not installed (the message
            says how to install it).
    """
    scope = connection.scope
    batch = from_scope(scope)
    for key in _ENDPOINT_STACKS:
        stack = scope.get(key)
        if stack is not None:
            stack.push(_DiscardOnError(batch))
            break
    return batch


BackgroundTasks = Annotated[_BackgroundTasks, Depends(get_background_tasks)]
"""A handler parameter typed ``BackgroundTasks`` receives the request's batch."""
