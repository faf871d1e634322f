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

Unlike a plain ``Annotated`` alias, it answers ``isinstance(x,
BackgroundTasks)`` (true for a batch), as FastAPI's class does. A class-based
view that reads its attributes with :func:`typing.get_type_hints`
(fastapi-utils' ``cbv``) drops the ``Annotated`` part and with it the
dependency: FastAPI then fails at startup, with a message that says to write
``background_tasks: BackgroundTasks = Depends(get_background_tasks)``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import trio

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection  # noqa: TC002 - FastAPI reads it at runtime
except ImportError as exc:  # pragma: no cover - the dev extra has FastAPI
    raise ImportError(
        f"trio_background.fastapi needs FastAPI ({exc}): pip install 'trio-background[fastapi]'"
    ) from exc

from ._middleware import Exchange, exchange_from_scope
from ._observe import TaskObserver
from ._tasks import BackgroundTasks as _BackgroundTasks

if TYPE_CHECKING:
    from collections.abc import Callable

# FastAPI >= 0.142 traces its own background tasks when its telemetry is on.
_fastapi_operation: Callable[..., AbstractContextManager[None]] | None
try:
    from fastapi.telemetry._api import (
        _operation,  # pyright: ignore[reportPrivateUsage]
    )
except ImportError:  # pragma: no cover - older FastAPI, or no OpenTelemetry
    _fastapi_operation = None
else:
    _fastapi_operation = _operation

if TYPE_CHECKING:
    from collections.abc import Generator
    from types import TracebackType

    from ._middleware import Connection
    from ._runner import Policy
    from ._tasks import BackgroundTask

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


class _FastAPISpans(TaskObserver):
    """Each task a ``fastapi.background_task`` span, as FastAPI makes for its own.

    FastAPI (>= 0.142, telemetry on) wraps each of its own background tasks in
    that span, a child of the request's span, with ``code.function.name`` and
    an error status when the task raises; a port that swaps the import keeps
    those spans, made by FastAPI's own code, plus the task's id and state.
    """

    def task_running(self, task: BackgroundTask) -> AbstractContextManager[None] | None:
        if _fastapi_operation is None:  # pragma: no cover - older FastAPI
            return None
        return _span(task)


@contextmanager
def _span(task: BackgroundTask) -> Generator[None]:
    from opentelemetry import trace  # FastAPI's telemetry needs it: here it is installed

    assert _fastapi_operation is not None
    with _fastapi_operation(name="background_task", function=task.func):
        span = trace.get_current_span()
        if task.id is not None:
            span.set_attribute("trio_background.task.id", task.id)
        state = "completed"
        try:
            yield
        except trio.Cancelled:
            state = "cancelled" if task.is_async else "abandoned"
            raise
        except BaseException:
            state = "failed"
            raise
        finally:
            span.set_attribute("trio_background.task.state", state)


_SPANS = _FastAPISpans()
# A middleware's policy, with the spans: made once per policy (a few per app).
_WITH_SPANS: dict[int, tuple[Policy, Policy]] = {}


def _with_spans(policy: Policy) -> Policy:
    known = _WITH_SPANS.get(id(policy))
    if known is None or known[0] is not policy:
        known = _WITH_SPANS[id(policy)] = (policy, policy.plus(_SPANS))
    return known[1]


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
    # Only when FastAPI traces this request (telemetry on and a tracer set):
    # otherwise its own tasks get no span either, and ours skip the observer.
    telemetry = scope.get("fastapi.telemetry")
    if getattr(telemetry, "tracer", None) is not None and isinstance(exchange, Exchange):
        exchange.use(_with_spans(exchange.policy))
    batch = exchange.batch
    request_stack = scope.get(_REQUEST_STACK)
    if request_stack is not None:
        exchange.defer_to(request_stack)
    function_stack = scope.get(_FUNCTION_STACK)
    if function_stack is not None:
        function_stack.push(_DiscardOnError(exchange))
    return batch


class _CheckableAnnotated(type(Annotated[int, 0]), _root=True):  # type: ignore[misc,call-arg]
    """``Annotated[batch, Depends(...)]`` that ``isinstance`` accepts.

    FastAPI reads it as any ``Annotated`` alias (the type and its
    dependency); ``isinstance``/``issubclass`` answer for the batch class, as
    for FastAPI's own ``BackgroundTasks`` class, where a plain alias raises
    "Subscripted generics cannot be used with class and instance checks"
    (ported code does ``isinstance(x, BackgroundTasks)``). It is typing's own
    ``Annotated`` alias class, subclassed the way typing subclasses it.
    """

    def __instancecheck__(self, obj: object) -> bool:
        return isinstance(obj, _BackgroundTasks)

    def __subclasscheck__(self, cls: type) -> bool:
        return issubclass(cls, _BackgroundTasks)


if TYPE_CHECKING:
    # For type checkers the batch class itself: a handler's parameter is a
    # batch, and isinstance() checks pass (an Annotated alias would fail them).
    BackgroundTasks = _BackgroundTasks
else:
    BackgroundTasks: Any = _CheckableAnnotated(_BackgroundTasks, (Depends(get_background_tasks),))
    """A handler parameter typed ``BackgroundTasks`` receives the request's batch.

    ``isinstance(x, BackgroundTasks)`` is true for a batch. In a class-based
    view that reads its attributes with :func:`typing.get_type_hints`, write
    the dependency out: ``background_tasks: BackgroundTasks =
    Depends(get_background_tasks)``.
    """
