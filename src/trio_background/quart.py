"""Quart-trio integration: the extension, and the view's batch.

Install it the way Quart extensions install::

    from quart_trio import QuartTrio
    from trio_background.quart import BackgroundTasksExtension, background_tasks

    app = QuartTrio(__name__)
    BackgroundTasksExtension(app, drain_timeout=10)

    @app.post("/signup")
    async def signup():
        background_tasks().add_task(send_welcome, (await request.form)["email"])
        return "ok"

The extension wraps ``app.asgi_app`` in
:class:`~trio_background.BackgroundTasksMiddleware` (its keyword arguments
are the middleware's), so a Quart-trio app gets the same batches, deadline
and report as any other. Quart's own ``app.add_background_task`` is left
as it is.

The one hard idea: a task runs after its request has ended, when Quart has
already popped the request's app and request contexts (``current_app``
would raise). So when a view adds a task, the extension keeps a copy of both
contexts, as Quart's ``copy_current_request_context`` does, and sets them
around the task's run: ``current_app``, ``g`` (the request's own), ``request``
and ``session`` work inside it, in a sync task's thread too. The copies are
not pushed again: Quart's context signals and teardown functions ran when
the request ended and do not run once more for each task.

As with FastAPI, a view that raises (an ``HTTPException`` from ``abort()``
included) loses its batch: its tasks end ``skipped``, with the reason.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

try:
    import quart
    from quart.globals import _cv_app, _cv_request  # pyright: ignore[reportPrivateUsage]
    from quart_trio import QuartTrio
except ImportError as exc:  # pragma: no cover - the test environment has the extra
    raise ImportError(
        "trio_background.quart needs Quart-trio: pip install 'trio-background[quart]'"
    ) from exc

from ._middleware import BackgroundTasksMiddleware, exchange_from_scope, from_scope
from ._observe import TaskObserver

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator
    from contextlib import AbstractContextManager

    from quart.ctx import AppContext, RequestContext

    from ._asgi import ASGIApp, Scope
    from ._records import TaskRecord
    from ._supervisor import Supervisor
    from ._tasks import BackgroundTask, BackgroundTasks

__all__ = ["BackgroundTasksExtension", "background_tasks"]

EXTENSION_KEY = "trio_background"
"""The extension's key in ``app.extensions``."""


class _QuartContexts(TaskObserver):
    """Copies a view's app and request contexts when it adds a task; sets them as the task runs."""

    def __init__(self) -> None:
        # Keyed by id(): a task object is alive from task_added until
        # task_ended, which drops its entry.
        self._contexts: dict[int, tuple[AppContext | None, RequestContext | None]] = {}

    def __len__(self) -> int:
        return len(self._contexts)

    def task_added(self, task: BackgroundTask) -> None:
        app_context = _cv_app.get(None)
        request_context = _cv_request.get(None)
        if app_context is None and request_context is None:
            return
        self._contexts[id(task)] = (
            None if app_context is None else app_context.copy(),
            None if request_context is None else cast("RequestContext", request_context.copy()),
        )

    def task_running(self, task: BackgroundTask) -> AbstractContextManager[None] | None:
        contexts = self._contexts.get(id(task))
        if contexts is None:
            return None
        return _contexts_set(*contexts)

    def task_ended(self, task: BackgroundTask, record: TaskRecord) -> None:
        self._contexts.pop(id(task), None)


@contextmanager
def _contexts_set(
    app_context: AppContext | None, request_context: RequestContext | None
) -> Generator[None, None, None]:
    app_token = None if app_context is None else _cv_app.set(app_context)
    request_token = None if request_context is None else _cv_request.set(request_context)
    try:
        yield
    finally:
        if request_token is not None:
            _cv_request.reset(request_token)
        if app_token is not None:
            _cv_app.reset(app_token)


class BackgroundTasksExtension:
    """Background tasks for a Quart-trio app, run after each response.

    ``BackgroundTasksExtension(app, **options)``, or make it first and call
    :meth:`init_app` later (the application-factory pattern). It wraps
    ``app.asgi_app`` in :class:`~trio_background.BackgroundTasksMiddleware`
    and registers itself as ``app.extensions["trio_background"]``. Views get
    their request's batch with :func:`background_tasks`.

    Args:
        app: The app, or None to call :meth:`init_app` later.
        **options: The middleware's options (``mode``, ``drain_timeout``,
            ``on_error``, ``error_hook``, ``thread_limit``, ...).

    Raises:
        TypeError: ``app`` is not a ``QuartTrio`` app, or an option is not
            one the middleware takes.

    Attributes:
        middleware: The middleware, once an app is initialised.
    """

    def __init__(self, app: QuartTrio | None = None, **options: Any) -> None:
        self.options = options
        self._observer = _QuartContexts()
        self.middleware: BackgroundTasksMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: QuartTrio) -> None:
        """Install the middleware on ``app``.

        Raises:
            TypeError: ``app`` is not a ``QuartTrio`` app (Quart itself runs
                on asyncio), or already has an extension, or this extension
                already serves another app.
        """
        if not isinstance(app, QuartTrio):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"BackgroundTasksExtension needs a Quart-trio app, got {type(app).__qualname__}; "
                "Quart itself runs on asyncio: make the app with "
                "from quart_trio import QuartTrio; app = QuartTrio(__name__)"
            )
        if EXTENSION_KEY in app.extensions:
            raise TypeError(
                "this app already has a BackgroundTasksExtension; initialise it once per app"
            )
        if self.middleware is not None:
            raise TypeError("this BackgroundTasksExtension already serves an app; make one per app")
        options = dict(self.options)
        observers = [self._observer, *options.pop("observers", ())]
        middleware = BackgroundTasksMiddleware(
            cast("ASGIApp", app.asgi_app), observers=observers, **options
        )
        app.asgi_app = middleware  # type: ignore[assignment, method-assign]  # pyright: ignore[reportAttributeAccessIssue]
        _discard_when_the_view_raises(app)
        app.extensions[EXTENSION_KEY] = self
        self.middleware = middleware

    @property
    def supervisor(self) -> Supervisor:
        """The supervisor that runs the app's batches.

        Raises:
            RuntimeError: :meth:`init_app` has not been called.
        """
        if self.middleware is None:
            raise RuntimeError(
                "this BackgroundTasksExtension has no app yet: call init_app(app) first"
            )
        return self.middleware.supervisor


def _discard_when_the_view_raises(app: QuartTrio) -> None:
    # Every exception a view (or a before_request function) raises goes
    # through handle_user_exception, also the HTTPExceptions that abort()
    # raises and Quart turns into error responses.
    handle: Callable[[Any], Awaitable[Any]] = app.handle_user_exception

    async def handle_user_exception(error: Any) -> Any:
        if quart.has_request_context():
            if _scope().get(_BATCH_KEY) is not None:
                exchange_from_scope(_scope()).app_failed(
                    f"the view raised {type(error).__qualname__}"
                )
        return await handle(error)

    app.handle_user_exception = handle_user_exception  # type: ignore[method-assign]

    # What goes wrong after the view (an after_request function, building the
    # response) reaches handle_exception instead: the client gets 500, and the
    # tasks do not run either.
    handle_uncaught: Callable[[Any], Awaitable[Any]] = app.handle_exception

    async def handle_exception(error: Any) -> Any:
        if quart.has_request_context() and _scope().get(_BATCH_KEY) is not None:
            exchange_from_scope(_scope()).app_failed(
                f"the app raised {type(error).__qualname__} after the view"
            )
        return await handle_uncaught(error)

    app.handle_exception = handle_exception  # type: ignore[method-assign]


def _scope() -> Scope:
    # Quart types its scopes as TypedDicts; they are the server's dicts.
    return cast("Scope", quart.request.scope)


# The batch background_tasks() gave this request, kept in its scope for the
# handler above.
_BATCH_KEY = "trio_background.quart.batch"


def background_tasks() -> BackgroundTasks:
    """The batch of the Quart request being handled.

    Call it in a view (or a ``before_request``/``after_request`` function).
    Its tasks run after the response, with copies of the request's app and
    request contexts.

    Raises:
        RuntimeError: Outside a request (a websocket, ``before_serving``, a
            CLI command), or the app has no :class:`BackgroundTasksExtension`.
    """
    if not quart.has_request_context():
        raise RuntimeError(
            "background_tasks() works inside a Quart request (a view, or a before/after "
            "request function), where the request's batch is; outside one, for work that "
            "belongs to no request, use app.add_background_task(func)"
        )
    scope = _scope()
    batch: BackgroundTasks | None = scope.get(_BATCH_KEY)
    if batch is None:
        try:
            batch = from_scope(scope)
        except RuntimeError:
            raise RuntimeError(
                "this request has no background tasks batch: the app has no "
                "BackgroundTasksExtension; install it with BackgroundTasksExtension(app)"
            ) from None
        scope[_BATCH_KEY] = batch
    return batch
