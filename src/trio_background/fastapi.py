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
runs after the response, before the request's ``yield`` dependencies close
(as in FastAPI >= 0.118). As in FastAPI, tasks added by a handler that raises
(``HTTPException`` included) do not run: they end ``skipped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection  # noqa: TC002 - FastAPI reads it at runtime
except ImportError as exc:  # pragma: no cover - the dev extra has FastAPI
    raise ImportError(
        f"trio_background.fastapi needs FastAPI ({exc}): pip install 'trio-background[fastapi]'"
    ) from exc

from ._middleware import exchange_from_scope
from ._tasks import BackgroundTasks as _BackgroundTasks

if TYPE_CHECKING:
    from types import TracebackType

    from ._middleware import Connection, Exchange

__all__ = ["BackgroundTasks", "get_background_tasks"]

# FastAPI (>= 0.118) opens these exit stacks around each request: the first
# around the endpoint call alone, the second also around sending the response,
# holding the request's yield dependencies.
_FUNCTION_STACK = "fastapi_function_astack"
_REQUEST_STACK = "fastapi_inner_astack"


class _DiscardOnError:
    """An ``__exit__``-style callback: a handler that raised loses its batch."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange | Connection) -> None:
        self._exchange = exchange

    def __call__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc_type is not None:
            self._exchange.app_failed(f"the handler raised {exc_type.__qualname__}")
        return False


async def get_background_tasks(connection: HTTPConnection) -> _BackgroundTasks:
    """FastAPI dependency: the request's batch.

    A plain ``async def`` (no thread hop, and no generator dependency, whose
    exit stack costs more than the rest of the library per request). It asks
    the middleware to run the batch from the request's exit stack, so that
    tasks see the request's ``yield`` dependencies still open, as in FastAPI;
    and, to skip the tasks of a handler that raises, it leaves a callback on
    the exit stack FastAPI keeps around the endpoint call.

    Raises:
        RuntimeError: BackgroundTasksMiddleware is not installed (the message
            says how to install it).
    """
    scope = connection.scope
    exchange = exchange_from_scope(scope)
    batch = exchange.batch
    request_stack = scope.get(_REQUEST_STACK)
    if request_stack is not None:
        exchange.defer_to(request_stack)
    function_stack = scope.get(_FUNCTION_STACK)
    if function_stack is not None:
        function_stack.push(_DiscardOnError(exchange))
    return batch


BackgroundTasks = Annotated[_BackgroundTasks, Depends(get_background_tasks)]
"""A handler parameter typed ``BackgroundTasks`` receives the request's batch."""
