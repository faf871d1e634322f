"""The durable backend on streaQ: register functions, hand tasks off, read status.

The one hard idea: streaQ's Redis client (coredis) keeps its connections in
an AnyIO task group that must be entered and left by the same task, in
order. The middleware calls :meth:`StreaqBackend.open` and
:meth:`StreaqBackend.aclose` from the lifespan, at points nested inside the
app's own lifespan code (which may open task groups of its own), so entering
the client there would tangle the two. Instead ``open()`` starts one trio
system task that owns the client for the backend's whole life: it enters
streaQ's ``Worker``, says "ready", and waits for ``aclose()``. Requests only
borrow the client to send commands, which is what coredis allows from any
task once its pool has been entered.
"""

from __future__ import annotations

import enum
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import streaq
import trio
from coredis.exceptions import ResponseError
from streaq import Worker
from streaq.types import Streaq
from streaq.utils import now_ms

if sys.version_info < (3, 11):  # pragma: no cover - streaQ needs 3.11, the checkers say 3.10
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from streaq.task import Task, TaskResult, TaskStatus

    from .._tasks import BackgroundTask

__all__ = ["DEFAULT_QUEUE", "Durable", "StreaqBackend", "make_streaq_worker"]

F = TypeVar("F", bound=Callable[..., Any])


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET

DEFAULT_QUEUE = "trio_background"


@dataclass(frozen=True, slots=True)
class Durable:
    """One registered function: what the worker runs under ``name``."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    max_tries: int | None
    timeout: float | None
    ttl: float | None


def _check_seconds(what: str, value: object, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")


def _td(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


class StreaqBackend:
    """Hands chosen background tasks to streaQ workers through Redis.

    Register the functions that must survive the web process with
    :meth:`task`; ``add_task`` of such a function in a request then stores
    the call in Redis before the response goes out (see
    ``BackgroundTasksMiddleware(app, backend=...)``), and a worker started
    with ``python -m trio_background.streaq worker MODULE:BACKEND`` runs it,
    on trio, once per call: if a worker dies mid-task, another one runs it
    again after ``idle_timeout``.

    The worker and the web process import the same module, so both know
    the same functions under the same names; the worker runs nothing but
    those (a name it does not know fails the task, it never imports a path
    read from Redis).

    Args:
        redis_url: Where Redis is, e.g. ``"redis://127.0.0.1:6379/0"``
            (``rediss://`` for TLS, ``unix://`` for a socket).
        queue_name: The streaQ queue: web processes and workers of one app
            use the same name; different apps on one Redis use different
            names.
        concurrency: How many tasks one worker runs at once (the worker's
            ``--concurrency`` overrides it).
        idle_timeout: Seconds after which a task whose worker stopped
            answering (killed, lost its network) is given to another worker.
            A running task's worker renews it, so long tasks are fine.
        hand_off_timeout: Seconds a hand-off may take before it counts as a
            failure (the client then gets 503).
        signing_secret: If given, every entry is signed with it (HMAC) and
            a worker refuses entries that do not verify before unpickling
            them. Use it whenever anyone but your processes can write to
            this Redis: streaQ stores arguments with ``pickle``.
        max_tries: Default for :meth:`task`: how many times a worker may
            start one call (redeliveries after a worker died count).

    Error handling:
        :meth:`hand_off` raises whatever kept the tasks from being stored
        (connection refused, timeout, Redis error); the middleware then
        answers 503 and the tasks end ``skipped``. The tasks of one call are
        written in one MULTI/EXEC transaction: all of them or none. If the
        connection breaks after Redis ran the transaction but before the
        answer arrived, the tasks are stored although the call failed: they
        run (at least once), never silently lost.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        queue_name: str = DEFAULT_QUEUE,
        concurrency: int = 16,
        idle_timeout: float = 60.0,
        hand_off_timeout: float = 5.0,
        signing_secret: str | None = None,
        max_tries: int | None = 3,
    ) -> None:
        _check_url(redis_url)
        _check_queue_name(queue_name)
        _check_concurrency(concurrency)
        _check_seconds("idle_timeout", idle_timeout, allow_none=False)
        _check_seconds("hand_off_timeout", hand_off_timeout, allow_none=False)
        _check_max_tries(max_tries)
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.concurrency = concurrency
        self.idle_timeout = idle_timeout
        self.hand_off_timeout = hand_off_timeout
        self.max_tries = max_tries
        self._signing_secret = signing_secret
        self._by_name: dict[str, Durable] = {}
        self._by_func: dict[Callable[..., Any], Durable] = {}
        self._client: Worker[None] | None = None
        self._closing: trio.Event | None = None
        self._closed: trio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"<StreaqBackend {self.queue_name!r} at {self.redis_url!r}, "
            f"{len(self._by_name)} functions>"
        )

    # -- registering ------------------------------------------------------

    @overload
    def task(self, func: F, /) -> F: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        max_tries: int | None = ...,
        timeout: float | None = None,
        ttl: float | None = 300.0,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        max_tries: int | _Unset | None = _UNSET,
        timeout: float | None = None,
        ttl: float | None = 300.0,
    ) -> Any:
        """Register ``func`` as durable: ``add_task(func, ...)`` hands it off.

        Use as ``@backend.task`` or ``@backend.task(timeout=60)``. The
        function is returned unchanged: calling it directly still runs it
        here and now.

        Args:
            func: A function defined with ``def`` or ``async def`` at module
                level (a sync one runs in a worker thread).
            name: The name stored in Redis; by default
                ``"module.qualname"``. Web processes and workers must agree
                on it; set it to keep old entries runnable after a rename.
            max_tries: How many times a worker may start one call (default:
                the backend's).
            timeout: Seconds one run may take before the worker cancels it
                (None: no limit).
            ttl: Seconds the result stays readable with :meth:`result`.

        Raises:
            TypeError: ``func`` is not a plain function.
            ValueError: The name is taken, or cannot be found by a worker.
        """
        tries = self.max_tries if isinstance(max_tries, _Unset) else max_tries
        _check_max_tries(tries)
        _check_seconds("timeout", timeout)
        _check_seconds("ttl", ttl)

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self._register(func, name=name, max_tries=tries, timeout=timeout, ttl=ttl)
            return func

        if func is None:
            return register
        return register(func)

    def _register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None,
        max_tries: int | None,
        timeout: float | None,
        ttl: float | None,
    ) -> None:
        if not inspect.isfunction(func):
            raise TypeError(
                "backend.task registers a function defined with def or async def, "
                f"got {type(func).__qualname__} {func!r}"
            )
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"backend.task got a generator function ({func.__qualname__}); a durable "
                "task is called once: register a function that consumes the generator"
            )
        if name is None:
            if "<" in func.__qualname__:
                raise ValueError(
                    f"cannot register {func.__qualname__}: a worker finds a durable function "
                    "by module and name, so define it at module level (or pass name=)"
                )
            if func.__module__ == "__main__":
                raise ValueError(
                    f"cannot register {func.__qualname__} from __main__: a worker imports "
                    "your module under its real name, so the names would differ; serve the "
                    "app by its import path (python -m trio_background MODULE:APP) or pass name="
                )
            name = f"{func.__module__}.{func.__qualname__}"
        else:
            _check_name(name)
        if name in self._by_name:
            raise ValueError(
                f"a durable function named {name!r} is already registered on {self!r}; "
                "pass another name="
            )
        durable = Durable(
            name=name,
            func=func,
            is_async=inspect.iscoroutinefunction(func),
            max_tries=max_tries,
            timeout=timeout,
            ttl=ttl,
        )
        self._by_name[name] = durable
        self._by_func[func] = durable
        if self._client is not None:
            _register_on(self._client, durable)

    def is_durable(self, func: Callable[..., object]) -> bool:
        """Whether ``func`` was registered with :meth:`task` on this backend."""
        try:
            return func in self._by_func
        except TypeError:  # unhashable callable: never registered
            return False

    @property
    def functions(self) -> tuple[Durable, ...]:
        """The registered functions, in registration order."""
        return tuple(self._by_name.values())

    # -- the connection ---------------------------------------------------

    async def open(self) -> None:
        """Connect to Redis (the middleware calls this at lifespan startup).

        Raises:
            RuntimeError: Already open.
            Exception: Redis could not be reached (coredis's error, raised
                here so the app does not start without its queue).
        """
        if self._closed is not None:
            raise RuntimeError(f"{self!r} is already open; aclose() it first")
        client = make_streaq_worker(self)
        ready = trio.Event()
        closing = trio.Event()
        closed = trio.Event()
        failure: list[Exception] = []

        async def hold() -> None:
            # A system task: it must never raise (trio would call that an
            # internal error), so a failure is handed to open()/aclose().
            try:
                async with client:
                    ready.set()
                    await closing.wait()
            except Exception as exc:
                failure.append(exc)
            finally:
                ready.set()
                closed.set()

        self._closed = closed
        self._closing = closing
        trio.lowlevel.spawn_system_task(hold, name=f"{self!r} connection")
        await ready.wait()
        if failure:
            self._closed = self._closing = None
            raise ConnectionError(
                f"cannot connect to Redis at {self.redis_url} for {self!r}: {_leaf(failure[0])}"
            ) from failure[0]
        self._client = client

    async def aclose(self) -> None:
        """Close the connection (lifespan shutdown). Idempotent."""
        closing, closed = self._closing, self._closed
        if closing is None or closed is None:
            return
        self._client = None
        closing.set()
        with trio.CancelScope(shield=True):
            await closed.wait()
        self._closing = self._closed = None

    async def __aenter__(self) -> StreaqBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _open_client(self) -> Worker[None]:
        if self._client is None:
            raise RuntimeError(
                f"{self!r} is not open: use BackgroundTasksMiddleware(app, backend=...) "
                "(it opens the backend at startup), or 'async with backend:'"
            )
        return self._client

    # -- handing off ------------------------------------------------------

    async def hand_off(self, tasks: Sequence[BackgroundTask]) -> list[str]:
        """Store every task in Redis in one transaction; return their streaQ ids in order.

        Raises:
            ValueError: A task's function is not registered on this backend.
            Exception: Redis did not confirm the transaction within
                ``hand_off_timeout`` (``trio.TooSlowError``) or failed
                (coredis's error); then none of the tasks is stored.
        """
        client = self._open_client()
        jobs: list[Task[Any, None]] = []
        for task in tasks:
            durable = self._by_func.get(task.func)
            if durable is None:
                raise ValueError(
                    f"{task.name} is not registered on {self!r}: register it with @backend.task"
                )
            registered = client.registry[durable.name]
            jobs.append(registered.enqueue(*task.args, **task.kwargs))
        if not jobs:
            return []
        enqueue_time = now_ms()
        # Serialize first, so an argument pickle cannot handle fails before
        # anything is sent.
        data = [await job.serialize(enqueue_time) for job in jobs]
        with trio.fail_after(self.hand_off_timeout):
            try:
                await _publish(client, jobs, data, enqueue_time)
            except ResponseError as exc:
                # A Redis restarted without persistence has lost streaQ's
                # functions (a worker loads them when it starts): load them
                # again and store the tasks; nothing was stored the first time.
                if "Function not found" not in str(exc):
                    raise
                await _load_functions(client)
                await _publish(client, jobs, data, enqueue_time)
        return [job.id for job in jobs]

    # -- reading ----------------------------------------------------------

    async def status(self, task_id: str) -> TaskStatus:
        """streaQ's status of a handed-off task: queued, running, done or missing."""
        return await self._open_client().status_by_id(task_id)

    async def result(self, task_id: str) -> TaskResult[Any]:
        """Wait for a handed-off task's result (streaQ's ``TaskResult``).

        It waits as long as the task takes: bound it with
        ``with trio.fail_after(seconds):``. The result stays readable for
        the function's ``ttl``.
        """
        return await self._open_client().result_by_id(task_id)


def _leaf(exc: BaseException) -> BaseException:
    """The error inside the AnyIO task groups' single-exception groups."""
    leaf: BaseException = exc
    while isinstance(leaf, BaseExceptionGroup):
        group: BaseExceptionGroup[BaseException] = leaf  # pyright: ignore[reportUnknownVariableType]
        if len(group.exceptions) != 1:
            break
        leaf = group.exceptions[0]
    return cast("BaseException", leaf)  # type: ignore[redundant-cast]  # for pyright


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")


def _check_url(url: object) -> None:
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "redis_url must be a Redis URL such as 'redis://127.0.0.1:6379/0' "
            f"(or rediss://, unix://), got {url!r}"
        )


def _check_queue_name(name: object) -> None:
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"queue_name must be a non-empty name without ':', got {name!r}")


def _check_concurrency(concurrency: object) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")


def _check_max_tries(max_tries: object) -> None:
    if max_tries is not None and (
        isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1
    ):
        raise ValueError(f"max_tries must be a whole number >= 1 or None, got {max_tries!r}")


def make_streaq_worker(
    backend: StreaqBackend,
    *,
    concurrency: int | None = None,
    drain_timeout: float = 0.0,
    worker_class: type[Worker[None]] = Worker,
) -> Worker[None]:
    """A streaQ ``Worker`` on trio for ``backend``'s queue, knowing its functions.

    The web process uses one as its Redis client; the worker command runs
    one (of its own subclass).
    """
    if concurrency is None:
        concurrency = backend.concurrency
    _check_concurrency(concurrency)
    worker = worker_class(
        backend.redis_url,
        queue_name=backend.queue_name,
        concurrency=concurrency,
        # With prefetch 1 streaQ claims at most concurrency + 1 tasks: a
        # worker that stops holds few claimed-but-unstarted tasks, which the
        # others get after idle_timeout.
        prefetch=1,
        idle_timeout=backend.idle_timeout,
        # streaQ only adds this to the clock: fractions of a second work.
        grace_period=drain_timeout,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        signing_secret=backend._signing_secret,  # pyright: ignore[reportPrivateUsage]
        anyio_backend="trio",
    )
    for durable in backend.functions:
        _register_on(worker, durable)
    return worker


async def _publish(
    client: Worker[None], jobs: Sequence[Task[Any, None]], data: Sequence[Any], enqueue_time: int
) -> None:
    async with client.redis.pipeline(transaction=True) as pipe:
        lib = Streaq(pipe)
        replies = [
            client.publish_task(pipe, job, entry, enqueue_time, lib=lib)
            for job, entry in zip(jobs, data, strict=True)
        ]
    for reply in replies:
        await reply


async def _load_functions(client: Worker[None]) -> None:
    # As streaQ's Worker does when it is entered.
    code = (Path(streaq.__file__).parent / "lua" / "streaq.lua").read_text()
    await Streaq(client.redis, code=code, replace=True)


def _register_on(worker: Worker[None], durable: Durable) -> None:
    func = durable.func
    worker.task(
        name=durable.name,
        max_tries=durable.max_tries,
        timeout=_td(durable.timeout),
        ttl=_td(durable.ttl),
    )(func)
