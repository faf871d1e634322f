"""The durable backend on Celery: publish chosen tasks to Celery's broker.

Celery's producer side is synchronous (kombu), so each hand-off runs in a
worker thread, under a ``trio.CapacityLimiter`` the backend owns, and waits
for the broker's confirmation (Redis: the reply to the push; RabbitMQ: a
publisher confirm when the app sets ``broker_transport_options =
{"confirm_publish": True}``). Trio cannot stop a thread: at
``hand_off_timeout`` the thread is abandoned and told to publish nothing
more; a message it was already sending may still reach the broker, and is
then revoked (Celery's ``control.revoke``), which is best effort: see
:class:`CeleryBackend`.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

import celery  # type: ignore[import-untyped]  # pyright: ignore[reportMissingTypeStubs]
import trio

from .._durable_policy import Refusal, policy_of, put_policy, refuse, requested_policy

if TYPE_CHECKING:
    from .._policy import TaskPolicy
    from .._tasks import BackgroundTask

__all__ = ["CeleryBackend"]

logger = logging.getLogger("trio_background.celery")

F = TypeVar("F", bound=Callable[..., Any])

# Celery ships no types: its objects are Any here.
_Celery: Any = celery.Celery
_Task: Any = celery.Task


def _check_seconds(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


class CeleryBackend:
    """Hands chosen background tasks to Celery workers through Celery's broker.

    ``add_task(some_celery_task, *args)`` in a request (with
    ``BackgroundTasksMiddleware(app, backend=backend)``) publishes the call
    to the broker before the response goes out, and a Celery worker runs
    it; the task's record ends ``handed_off`` with Celery's task id (read
    its state with ``AsyncResult(engine_id)``). A plain function works too
    once registered with :meth:`task`, which registers it on the Celery app.

    Args:
        celery_app: The ``Celery`` application; its configuration (broker
            URL, queues, routes, serializer) applies as in any Celery
            producer.
        hand_off_timeout: Seconds a request's publish may take before it
            counts as a failure (the client then gets 503). Opening the
            backend (a first connection to the broker) is bounded by it too.
        threads: How many publishes may run at once (each in a thread).

    Error handling:
        :meth:`hand_off` raises when a message could not be published
        (broker down, refused, too slow); the middleware answers 503. Celery
        cannot take a published message back: when the broker confirms only
        after ``hand_off_timeout``, the backend revokes the late messages
        (workers running at that moment skip them; a worker that starts
        later skips them only with ``--statedb``), and logs a WARNING with
        their ids. If a 503 must always mean "never runs", use streaQ, which
        withdraws such a task before any worker can take it.
    """

    def __init__(self, celery_app: Any, *, hand_off_timeout: float = 5.0, threads: int = 8) -> None:
        if not isinstance(celery_app, _Celery):
            raise TypeError(f"CeleryBackend needs a celery.Celery application, got {celery_app!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        self.app: Any = celery_app
        self.hand_off_timeout = _check_seconds("hand_off_timeout", hand_off_timeout)
        self._limiter = trio.CapacityLimiter(threads)
        self._by_func: dict[Callable[..., Any], Any] = {}
        # The policy each function was registered with, to notice one put on later.
        self._policies: dict[Callable[..., Any], TaskPolicy | None] = {}
        self._open = False

    def __repr__(self) -> str:
        return f"<CeleryBackend {self.app.main!r} at {self.app.conf.broker_url!r}>"

    # -- registering ------------------------------------------------------

    @overload
    def task(self, func: F, /) -> F: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        limit: int | None = None,
        key: str | Callable[..., object] | None = None,
        **options: Any,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        limit: int | None = None,
        key: str | Callable[..., object] | None = None,
        **options: Any,
    ) -> Any:
        """Register ``func`` on the Celery app: ``add_task(func, ...)`` publishes it.

        Use as ``@backend.task``, ``@backend.task(retries=3, timeout=60)``
        or ``@backend.task(name=..., **celery_options)`` (the options are
        ``Celery.task``'s, e.g. ``rate_limit``). The function is returned
        unchanged: calling it runs it here and now; Celery's task object is
        ``backend.celery_task(func)``.

        The policy options are :func:`trio_background.task`'s, with its
        rules and messages, and the function gets that policy (a function
        already decorated with ``@trio_background.task(...)`` below this
        decorator brings its own). They become Celery's: ``timeout`` is
        ``time_limit`` (the prefork pool enforces it), ``retries``,
        ``retry_on``, ``backoff`` and ``max_backoff`` are ``max_retries``,
        ``autoretry_for``, ``retry_backoff`` and ``retry_backoff_max`` with
        ``retry_jitter=False`` (``backoff=0``: ``default_retry_delay=0``).

        Raises:
            TypeError: ``func`` is not a plain ``def`` function (Celery
                workers run synchronous functions); an option Celery cannot
                honour (``limit``, ``key``, a ``timeout`` that ``retry_on``
                would retry, a ``backoff`` or ``max_backoff`` that is not a
                whole number of seconds); policy options given together with
                the Celery options they set, or to a function that already
                has a policy.
            ValueError: An option is out of range (trio_background.task's
                message).
        """
        policy_options: dict[str, Any] = {
            "timeout": timeout,
            "retries": retries,
            "retry_on": retry_on,
            "backoff": backoff,
            "max_backoff": max_backoff,
            "limit": limit,
            "key": key,
        }

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isfunction(func):
                raise TypeError(
                    "backend.task registers a function defined with def, "
                    f"got {type(func).__qualname__} {func!r}"
                )
            if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
                raise TypeError(
                    f"backend.task got an async function ({func.__qualname__}); Celery "
                    "workers run plain functions: define it with def, or use "
                    "trio_background.streaq for async tasks"
                )
            if inspect.isgeneratorfunction(func):
                raise TypeError(
                    f"backend.task got a generator function ({func.__qualname__}); a durable "
                    "task is called once: register a function that consumes the generator"
                )
            policy = requested_policy(func, policy_options)
            celery_options = dict(options)
            if policy is not None:
                celery_options.update(_celery_policy(policy, options))
            if name is not None:
                celery_options["name"] = name
            celery_task = self.app.task(**celery_options)(func)
            put_policy(func, policy)
            self._by_func[func] = celery_task
            self._policies[func] = policy
            return func

        if func is None:
            return register
        return register(func)

    def celery_task(self, func: Callable[..., Any]) -> Any:
        """Celery's task object for a function registered with :meth:`task`."""
        try:
            return self._by_func[func]
        except KeyError:
            raise ValueError(f"{func!r} is not registered on {self!r}") from None

    def is_durable(self, func: Callable[..., object]) -> bool:
        """Whether ``func`` is a Celery task of this app or registered with :meth:`task`."""
        if isinstance(func, _Task):
            return getattr(func, "app", None) is self.app
        try:
            return func in self._by_func
        except TypeError:  # unhashable callable: never registered
            return False

    def _celery_task(self, func: Callable[..., object]) -> Any:
        if isinstance(func, _Task):
            return func
        found = self._by_func.get(func)
        if found is None:
            raise ValueError(
                f"{getattr(func, '__qualname__', func)!r} is not registered on {self!r}: "
                "pass a Celery task, or register the function with @backend.task"
            )
        return found

    # -- the connection ---------------------------------------------------

    async def open(self) -> None:
        """Check that the broker answers (the middleware calls this at lifespan startup).

        Raises:
            TypeError: A registered function got its policy after it was
                registered (``@trio_background.task(...)`` above
                ``@backend.task``): Celery's task was built without it.
            ConnectionError: The broker could not be reached within
                ``hand_off_timeout``.
        """
        for func, policy in self._policies.items():
            if policy_of(func) is not policy:
                raise TypeError(
                    f"{func.__qualname__} got its @trio_background.task(...) policy after "
                    "@backend.task registered it, so Celery's task was built without it: put "
                    "@trio_background.task(...) below @backend.task (decorators apply "
                    "bottom-up), or give the options to @backend.task(...)"
                )

        def connect() -> None:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1)

        try:
            with trio.fail_after(self.hand_off_timeout):
                await trio.to_thread.run_sync(
                    connect, abandon_on_cancel=True, limiter=self._limiter
                )
        except trio.TooSlowError:
            raise ConnectionError(
                f"cannot connect to Celery's broker for {self!r}: no answer within "
                f"hand_off_timeout ({self.hand_off_timeout:g}s)"
            ) from None
        except Exception as exc:
            raise ConnectionError(f"cannot connect to Celery's broker for {self!r}: {exc}") from exc
        self._open = True

    async def aclose(self) -> None:
        """Nothing to close: Celery's producer pool belongs to the Celery app."""
        self._open = False

    async def __aenter__(self) -> CeleryBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- handing off ------------------------------------------------------

    async def hand_off(self, tasks: Sequence[BackgroundTask]) -> list[str]:
        """Publish every task, in order, in one worker thread; return Celery's task ids.

        Raises:
            ValueError: A task is not a Celery task of this app nor registered.
            TimeoutError: The broker did not confirm within ``hand_off_timeout``.
            Exception: The broker refused or is unreachable (kombu's error);
                the messages published before the failure are revoked.
        """
        calls = [(self._celery_task(task.func), task.args, task.kwargs) for task in tasks]
        if not calls:
            return []
        ids = [str(uuid.uuid4()) for _ in calls]
        publish = _Publish(self.app, calls, ids)
        try:
            with trio.fail_after(self.hand_off_timeout):
                await trio.to_thread.run_sync(
                    publish.run, abandon_on_cancel=True, limiter=self._limiter
                )
        except BaseException as exc:
            publish.withdraw()
            if isinstance(exc, trio.TooSlowError):
                raise TimeoutError(
                    f"Celery's broker did not confirm the hand-off of {len(ids)} task(s) "
                    f"within hand_off_timeout ({self.hand_off_timeout:g}s)"
                ) from exc
            raise
        return ids


# The Celery options a policy sets: not to be given beside it.
_POLICY_OPTIONS = (
    "time_limit",
    "max_retries",
    "autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "default_retry_delay",
)


def _whole_seconds(option: str, value: float) -> Refusal | None:
    if value.is_integer():
        return None
    return Refusal(
        option,
        f"Celery counts {'retry_backoff' if option == 'backoff' else 'retry_backoff_max'}= "
        f"in whole seconds (it would round {value:g} down)",
        f"pass a whole number of seconds to {option}=",
    )


def _celery_policy(policy: TaskPolicy, options: dict[str, Any]) -> dict[str, Any]:
    """Celery's task options for ``policy``; raise if Celery cannot honour it.

    Raises:
        TypeError: See :meth:`CeleryBackend.task`.
    """
    clash = [option for option in _POLICY_OPTIONS if option in options]
    if clash:
        raise TypeError(
            f"backend.task got Celery's {clash[0]}= for {policy.name} beside a policy: give "
            "timeout=/retries=/retry_on=/backoff=/max_backoff= or Celery's options, not both"
        )
    refusals: list[Refusal | None] = []
    if policy.limit is not None:
        refusals.append(
            Refusal(
                "limit",
                "Celery's rate_limit= spaces out the starts in each worker and --concurrency "
                "bounds all of a worker's tasks; neither bounds the runs of one function "
                "across workers",
                "drop limit= (or leave the function out of the backend: in process, limit= holds)",
            )
        )
    if policy.key is not None:
        refusals.append(
            Refusal(
                "key",
                "Celery has no deduplication: two messages of one task both run",
                "drop key= and deduplicate before add_task (or leave the function out of the "
                "backend: in process, key= holds)",
            )
        )
    if policy.timeout is not None and policy.retries and issubclass(TimeoutError, policy.retry_on):
        refusals.append(
            Refusal(
                "timeout",
                "Celery's time_limit= kills an attempt that runs longer and never retries it, "
                "while retry_on= covers TimeoutError",
                "pass retry_on= types that do not cover TimeoutError (as Exception and OSError "
                "do), or drop timeout=",
            )
        )
    if policy.retries and policy.backoff:
        refusals.append(_whole_seconds("backoff", policy.backoff))
        refusals.append(_whole_seconds("max_backoff", policy.max_backoff))
    refuse("Celery", policy, [r for r in refusals if r is not None])
    mapped: dict[str, Any] = {}
    if policy.timeout is not None:
        mapped["time_limit"] = policy.timeout
    if policy.retries:
        mapped.update(
            max_retries=policy.retries,
            autoretry_for=policy.retry_on,
            retry_jitter=False,
        )
        if policy.backoff:
            mapped.update(
                retry_backoff=int(policy.backoff), retry_backoff_max=int(policy.max_backoff)
            )
        else:
            mapped.update(retry_backoff=False, default_retry_delay=0)
    return mapped


class _Publish:
    """One hand-off's messages, published by a worker thread that may be abandoned."""

    def __init__(
        self,
        app: Any,
        calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]],
        ids: list[str],
    ) -> None:
        self.app: Any = app
        self.calls = calls
        self.ids = ids
        self._lock = threading.Lock()
        self._withdrawn: bool = False
        self._published: list[str] = []

    def run(self) -> None:
        """In the thread: publish each message; stop if withdrawn; revoke if withdrawn late."""
        late: bool
        try:
            for (task, args, kwargs), task_id in zip(self.calls, self.ids, strict=True):
                with self._lock:
                    if self._withdrawn:
                        return
                task.apply_async(args=args, kwargs=kwargs, task_id=task_id, retry=False)
                with self._lock:
                    self._published.append(task_id)
                    late = self._withdrawn
                if late:
                    self._revoke([task_id])
        except Exception:
            with self._lock:
                published, self._published = self._published, []
                late = self._withdrawn
            if published and not late:
                # Part of the batch went out before the failure: the caller
                # answers 503, so take those back.
                self._revoke(published)
            raise

    def withdraw(self) -> None:
        """From trio, after a failure or timeout: publish no more, revoke what went out."""
        with self._lock:
            self._withdrawn = True
            published, self._published = self._published, []
        if published:
            threading.Thread(target=self._revoke, args=(published,), daemon=True).start()

    def _revoke(self, ids: list[str]) -> None:
        logger.warning(
            "Celery task(s) %s reached the broker although the client got 503: revoking "
            "them (best effort: workers that start later run them unless they use --statedb)",
            ", ".join(ids),
        )
        try:
            self.app.control.revoke(ids)
        except Exception:
            logger.exception("could not revoke Celery task(s) %s", ", ".join(ids))
