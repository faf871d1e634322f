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

The second hard idea: the response and the outcome must agree although Redis
may answer late. A hand-off stores its tasks *held* (in streaQ's delayed
queue, due only after ``hold`` seconds), so no worker can start them yet.
Once Redis confirmed the write, they are *released* (moved to the stream, at
once) and the client gets 2xx. If Redis did not confirm in time, the client
gets 503 and the tasks are *withdrawn*: removed from the delayed queue, or,
if the write has not arrived yet, their keys taken so that it stores nothing
when it does. Both are retried by the connection's task until Redis
confirms them; a held task nobody released runs when its hold ends (the
write was confirmed, so the client got 2xx).
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

import streaq
import trio
from coredis.exceptions import ResponseError
from streaq import Worker
from streaq.types import Streaq, StreaqRetry
from streaq.utils import now_ms

from .._durable_policy import Refusal, policy_of, put_policy, refuse, requested_policy
from .._records import format_error

if sys.version_info < (3, 11):  # pragma: no cover - streaQ needs 3.11, the checkers say 3.10
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from streaq.task import RegisteredTask, Task, TaskResult, TaskStatus

    from .._policy import TaskPolicy
    from .._tasks import BackgroundTask

__all__ = ["DEFAULT_QUEUE", "Durable", "StreaqBackend", "make_streaq_worker"]

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("trio_background.streaq")


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET

DEFAULT_QUEUE = "trio_background"

# How long a withdrawn task's key stays taken, so that a write that arrives
# after the withdrawal (held up in the network) stores nothing.
_TOMBSTONE_MS = 24 * 3600 * 1000
_TOMBSTONE = "trio_background: withdrawn, the client got 503"
# Between two attempts at a release or a withdrawal Redis did not confirm.
_RETRY_BACKOFF = (0.1, 5.0)

# KEYS: the delayed queue, the stream. ARGV: enqueue time, then the task ids.
# A task still held moves to the stream; one that is not (released already,
# or its hold ended and a worker moved it) is left alone.
_RELEASE = """
local released = 0
for i = 2, #ARGV do
  if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
    redis.call('xadd', KEYS[2], '*', 'task_id', ARGV[i], 'enqueue_time', ARGV[1])
    released = released + 1
  end
end
return released
"""

# KEYS: the delayed queue, then each task's key. ARGV: tombstone ttl (ms),
# the tombstone, then the task ids. Returns the ids that could not be
# withdrawn: stored and no longer held, so a worker runs them.
_WITHDRAW = """
local escaped = {}
for i = 3, #ARGV do
  local task_key = KEYS[i - 1]
  if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
    redis.call('del', task_key)
  elseif not redis.call('set', task_key, ARGV[2], 'nx', 'px', ARGV[1]) then
    if redis.call('get', task_key) ~= ARGV[2] then
      escaped[#escaped + 1] = ARGV[i]
    end
  end
end
return escaped
"""


@dataclass(frozen=True, slots=True)
class Durable:
    """One registered function: what the worker runs under ``name``.

    Its policy (timeout, retries) is the one the function carries when a
    worker registers it (see :func:`trio_background.task`).
    """

    name: str
    func: Callable[..., Any]
    is_async: bool
    max_tries: int | None
    ttl: float | None
    max_tries_given: bool = False

    @property
    def policy(self) -> TaskPolicy | None:
        """The function's policy, from ``backend.task(...)`` or ``@trio_background.task(...)``."""
        return policy_of(self.func)

    @property
    def timeout(self) -> float | None:
        """Seconds per attempt (the policy's ``timeout``), or None."""
        policy = self.policy
        return None if policy is None else policy.timeout


@dataclass(eq=False)
class _Settle:
    """A release or withdrawal Redis has not confirmed yet: retried until it does."""

    kind: Literal["release", "withdraw"]
    ids: list[str]
    enqueue_time: int
    give_up_at: float


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
        hold: Seconds a hand-off's tasks wait, stored but not runnable,
            until Redis has confirmed the write (then they run at once).
            Only a task whose release Redis never confirmed waits the whole
            hold; a withdrawal (the client got 503) must reach Redis within
            half of it. By default 12 x ``hand_off_timeout``, at least 60.

    Error handling:
        :meth:`hand_off` raises whatever kept the tasks from being stored
        (connection refused, timeout, Redis error); the middleware then
        answers 503 and the tasks end ``skipped``. The tasks of one call are
        written in one MULTI/EXEC transaction: all of them or none. If Redis
        ran the transaction but its answer came too late (a slow network,
        a connection that broke), the tasks are withdrawn before any worker
        could start them (see ``hold``), so a 503 always means that none of
        them runs, and a 2xx that all of them are stored.
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
        hold: float | None = None,
    ) -> None:
        _check_url(redis_url)
        _check_queue_name(queue_name)
        _check_concurrency(concurrency)
        _check_seconds("idle_timeout", idle_timeout, allow_none=False)
        _check_seconds("hand_off_timeout", hand_off_timeout, allow_none=False)
        _check_max_tries(max_tries)
        _check_seconds("hold", hold)
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.concurrency = concurrency
        self.idle_timeout = idle_timeout
        self.hand_off_timeout = hand_off_timeout
        self.max_tries = max_tries
        self.hold = max(60.0, 12 * hand_off_timeout) if hold is None else hold
        self._settle_send: trio.MemorySendChannel[_Settle] | None = None
        self._unsettled: set[_Settle] = set()
        self._all_settled = trio.Event()
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
        ttl: float | None = 300.0,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        limit: int | None = None,
        key: str | Callable[..., object] | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        max_tries: int | _Unset | None = _UNSET,
        ttl: float | None = 300.0,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        limit: int | None = None,
        key: str | Callable[..., object] | None = None,
    ) -> Any:
        """Register ``func`` as durable: ``add_task(func, ...)`` hands it off.

        Use as ``@backend.task`` or ``@backend.task(timeout=60, retries=3)``.
        The function is returned unchanged: calling it directly still runs
        it here and now.

        The policy options are :func:`trio_background.task`'s, with its
        rules and messages, and the function gets that policy (a function
        already decorated with ``@trio_background.task(...)`` keeps its
        own). A worker honours it: ``timeout`` per attempt (the attempt
        fails with ``TimeoutError("timed out after N s")``), and after a
        failure in ``retry_on`` up to ``retries`` more attempts, each
        ``min(backoff * 2**(n-2), max_backoff)`` seconds after the last
        (streaQ's delayed queue: it starts within streaQ's half-second
        poll of that time). streaQ then allows ``retries + 1`` tries in
        all, a redelivery after a worker died counting as one.

        Args:
            func: A function defined with ``def`` or ``async def`` at module
                level (a sync one runs in a worker thread).
            name: The name stored in Redis; by default
                ``"module.qualname"``. Web processes and workers must agree
                on it; set it to keep old entries runnable after a rename.
            max_tries: How many times a worker may start one call (default:
                the backend's); with ``retries``, ``retries + 1``.
            ttl: Seconds the result stays readable with :meth:`result`.
            timeout: Seconds per attempt (None: no limit).
            retries: More attempts after a failure in ``retry_on``.
            retry_on: The exception type(s) that are retried.
            backoff: Seconds before the first retry, doubled for each next.
            max_backoff: The longest wait between attempts.
            limit: Refused: streaQ bounds the tasks of one worker
                (``--concurrency``), not the runs of one function across
                workers.
            key: Refused: streaQ's ``unique`` lets one run of a function
                at a time and fails the others; it does not merge two
                hand-offs of one key.

        Raises:
            TypeError: ``func`` is not a plain function; an option has the
                wrong type; ``limit`` or ``key`` (streaQ cannot honour
                them); ``retries`` with ``max_tries``; options given to a
                function that already has a policy.
            ValueError: The name is taken, or cannot be found by a worker;
                an option is out of range.
        """
        tries = self.max_tries if isinstance(max_tries, _Unset) else max_tries
        _check_max_tries(tries)
        _check_seconds("ttl", ttl)
        options: dict[str, Any] = {
            "timeout": timeout,
            "retries": retries,
            "retry_on": retry_on,
            "backoff": backoff,
            "max_backoff": max_backoff,
            "limit": limit,
            "key": key,
        }

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self._register(
                func,
                name=name,
                max_tries=tries,
                max_tries_given=not isinstance(max_tries, _Unset),
                ttl=ttl,
                options=options,
            )
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
        max_tries_given: bool,
        ttl: float | None,
        options: dict[str, Any],
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
        policy = requested_policy(func, options)
        durable = Durable(
            name=name,
            func=func,
            is_async=inspect.iscoroutinefunction(func),
            max_tries=max_tries,
            ttl=ttl,
            max_tries_given=max_tries_given,
        )
        _streaq_tries(durable, policy)
        put_policy(func, policy)
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

        Bounded by ``hand_off_timeout``: a Redis that accepts the connection
        but never answers fails the open as one that refuses it does.

        Raises:
            RuntimeError: Already open.
            ConnectionError: Redis could not be reached, or did not answer
                within ``hand_off_timeout`` (raised here so the app does not
                start without its queue).
        """
        if self._closed is not None:
            raise RuntimeError(f"{self!r} is already open; aclose() it first")
        client = make_streaq_worker(self)
        ready = trio.Event()
        closing = trio.Event()
        closed = trio.Event()
        failure: list[Exception] = []
        cancel_open = trio.CancelScope()
        settle_send, settle_receive = trio.open_memory_channel[_Settle](math.inf)

        async def hold() -> None:
            # A system task: it must never raise (trio would call that an
            # internal error), so a failure is handed to open()/aclose().
            try:
                with cancel_open:
                    async with client:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._settle_all, client, settle_receive)
                            ready.set()
                            await closing.wait()
                            await self._settled(nursery)
            except Exception as exc:
                failure.append(exc)
            finally:
                ready.set()
                closed.set()

        self._closed = closed
        self._closing = closing
        self._settle_send = settle_send
        trio.lowlevel.spawn_system_task(hold, name=f"{self!r} connection")
        with trio.move_on_after(self.hand_off_timeout) as waiting:
            await ready.wait()
        if waiting.cancelled_caught:
            cancel_open.cancel()
            with trio.CancelScope(shield=True):
                await closed.wait()
            self._closed = self._closing = self._settle_send = None
            raise ConnectionError(
                f"cannot connect to Redis at {self.redis_url} for {self!r}: no answer within "
                f"hand_off_timeout ({self.hand_off_timeout:g}s)"
            )
        if failure:
            self._closed = self._closing = self._settle_send = None
            raise ConnectionError(
                f"cannot connect to Redis at {self.redis_url} for {self!r}: "
                f"{leaf_error(failure[0])}"
            ) from failure[0]
        self._client = client

    async def aclose(self) -> None:
        """Close the connection (lifespan shutdown). Idempotent.

        Releases and withdrawals Redis has not confirmed yet get up to
        ``hand_off_timeout`` (at most one second) more; those still
        unconfirmed then are logged as a WARNING with what becomes of them.
        """
        closing, closed = self._closing, self._closed
        if closing is None or closed is None:
            return
        self._client = None
        if self._settle_send is not None:
            self._settle_send.close()
            self._settle_send = None
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

        The tasks are stored held (no worker can start them), released once
        Redis confirmed the write, all within ``hand_off_timeout``. If Redis
        did not confirm in time (slow, gone, or the caller was cancelled),
        this raises and the tasks are withdrawn, so the 503 the client gets
        is true: none of them runs. The withdrawal is retried until Redis
        confirms it; only if Redis stays unreachable for the whole ``hold``
        (or this process dies first) can a task whose write Redis did store
        run after its hold ends, and then it is logged as a WARNING.

        Raises:
            ValueError: A task's function is not registered on this backend.
            TimeoutError: Redis did not confirm the write within
                ``hand_off_timeout``; the tasks are being withdrawn.
            Exception: Redis failed the write (coredis's error); the tasks
                are being withdrawn.
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
            hold = timedelta(seconds=self.hold)
            jobs.append(registered.enqueue(*task.args, **task.kwargs).start(delay=hold))
        if not jobs:
            return []
        deadline = trio.current_time() + self.hand_off_timeout
        # Past half the hold, a withdrawal could no longer tell a task a
        # worker took (its hold ended) from one never stored: stop trying.
        give_up_at = trio.current_time() + self.hold / 2
        ids = [job.id for job in jobs]
        enqueue_time = now_ms()
        # Serialize first, so an argument pickle cannot handle fails before
        # anything is sent.
        data = [await job.serialize(enqueue_time) for job in jobs]
        try:
            with trio.fail_at(deadline):
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
        except BaseException as exc:
            # The write may reach Redis after all (sent, answer late): take
            # it back, so that what the caller says (503) stays true.
            self._settle(_Settle("withdraw", ids, enqueue_time, give_up_at))
            if isinstance(exc, trio.TooSlowError):
                raise TimeoutError(
                    f"Redis at {self.redis_url} did not confirm the hand-off of "
                    f"{len(ids)} task(s) within hand_off_timeout ({self.hand_off_timeout:g}s); "
                    "they are withdrawn"
                ) from exc
            raise
        released = False
        with trio.move_on_at(deadline):
            try:
                await _release(client, ids, enqueue_time)
                released = True
            except Exception:
                logger.debug("release of %s failed; retrying in the background", ids)
        if not released:
            # Stored, so the client gets 2xx; they run once released, or
            # when the hold ends at the latest.
            self._settle(_Settle("release", ids, enqueue_time, give_up_at))
        return ids

    def _settle(self, settle: _Settle) -> None:
        if self._settle_send is None:  # pragma: no cover - hand_off checks it is open
            self._unsettled_warning(settle)
            return
        if not self._unsettled:
            self._all_settled = trio.Event()
        self._unsettled.add(settle)
        self._settle_send.send_nowait(settle)

    async def _settle_all(
        self, client: Worker[None], receive: trio.MemoryReceiveChannel[_Settle]
    ) -> None:
        async with receive, trio.open_nursery() as nursery:
            async for settle in receive:
                nursery.start_soon(self._settle_one, client, settle)

    async def _settle_one(self, client: Worker[None], settle: _Settle) -> None:
        backoff, max_backoff = _RETRY_BACKOFF
        try:
            while trio.current_time() < settle.give_up_at:
                with trio.move_on_after(self.hand_off_timeout):
                    try:
                        if settle.kind == "release":
                            await _release(client, settle.ids, settle.enqueue_time)
                        else:
                            escaped = await _withdraw(client, settle.ids)
                            if escaped:  # pragma: no cover - only past the hold
                                logger.warning(
                                    "durable task(s) %s could not be withdrawn: their hold "
                                    "had ended and a worker runs them, although the client "
                                    "got 503",
                                    ", ".join(escaped),
                                )
                        logger.debug("%s of %s confirmed", settle.kind, settle.ids)
                        return
                    except Exception as exc:
                        logger.debug("%s of %s failed: %s", settle.kind, settle.ids, exc)
                await trio.sleep(backoff)
                backoff = min(2 * backoff, max_backoff)
            self._unsettled_warning(settle)  # pragma: no cover - a whole hold without Redis
        finally:
            self._unsettled.discard(settle)
            if not self._unsettled:
                self._all_settled.set()

    async def _settled(self, nursery: trio.Nursery) -> None:
        """At close: wait a little for the releases and withdrawals still unconfirmed."""
        with trio.move_on_after(min(self.hand_off_timeout, 1.0)):
            if self._unsettled:
                await self._all_settled.wait()
        for settle in sorted(self._unsettled, key=lambda s: s.enqueue_time):
            self._unsettled_warning(settle)
        nursery.cancel_scope.cancel()

    def _unsettled_warning(self, settle: _Settle) -> None:
        if settle.kind == "release":
            logger.warning(
                "durable task(s) %s: Redis did not confirm their release; they run when "
                "their hold of %gs ends",
                ", ".join(settle.ids),
                self.hold,
            )
        else:
            logger.warning(
                "durable task(s) %s: Redis did not confirm their withdrawal (the client "
                "got 503); if Redis stored them they run when their hold of %gs ends",
                ", ".join(settle.ids),
                self.hold,
            )

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


def leaf_error(exc: BaseException) -> BaseException:
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
        signing_secret=backend._signing_secret,  # pyright: ignore[reportPrivateUsage]  # same module
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


async def _release(client: Worker[None], ids: Sequence[str], enqueue_time: int) -> None:
    priority = client.priorities[-1]
    await client.redis.eval(
        _RELEASE,
        keys=[client.queue_key + priority, client.stream_key + priority],
        args=[enqueue_time, *ids],
    )


async def _withdraw(client: Worker[None], ids: Sequence[str]) -> list[str]:
    """Withdraw ``ids``; return those that escaped (stored and no longer held)."""
    priority = client.priorities[-1]
    escaped = await client.redis.eval(
        _WITHDRAW,
        keys=[client.queue_key + priority, *(client.task_key + i for i in ids)],
        args=[_TOMBSTONE_MS, _TOMBSTONE, *ids],
    )
    return [str(i) for i in cast("list[Any]", escaped)]


async def _load_functions(client: Worker[None]) -> None:
    # As streaQ's Worker does when it is entered.
    code = (Path(streaq.__file__).parent / "lua" / "streaq.lua").read_text()
    await Streaq(client.redis, code=code, replace=True)


_REFUSALS = {
    "limit": Refusal(
        "limit",
        "streaQ bounds how many tasks one worker runs (--concurrency), not how many runs of "
        "one function run at once across workers",
        "drop limit= (or leave the function out of the backend: in process, limit= holds)",
    ),
    "key": Refusal(
        "key",
        "streaQ's unique= lets one run of a function at a time and fails the others, it does "
        "not merge two hand-offs of one key",
        "drop key= and deduplicate before add_task (or leave the function out of the "
        "backend: in process, key= holds)",
    ),
}


def _streaq_tries(durable: Durable, policy: TaskPolicy | None) -> int | None:
    """streaQ's ``max_tries`` for ``durable`` under ``policy``; raise if streaQ cannot honour it.

    Raises:
        TypeError: The policy has ``limit`` or ``key``, or ``retries`` while
            ``max_tries`` was given too.
    """
    if policy is None:
        return durable.max_tries
    refusals = [refusal for option, refusal in _REFUSALS.items() if getattr(policy, option)]
    refuse("streaQ", policy, refusals)
    if not policy.retries:
        return durable.max_tries
    if durable.max_tries_given:
        raise TypeError(
            f"backend.task got max_tries= for {policy.name}, whose policy has retries=: "
            "give retries= (a worker then allows retries + 1 tries) or max_tries=, not both"
        )
    return policy.retries + 1


def _register_on(worker: Worker[None], durable: Durable) -> None:
    # The policy as the function carries it now: @trio_background.task(...)
    # may have been applied above @backend.task, after registration.
    policy = durable.policy
    max_tries = _streaq_tries(durable, policy)
    register = worker.task(name=durable.name, max_tries=max_tries, ttl=_td(durable.ttl))
    if policy is None or (not policy.retries and policy.timeout is None):
        register(durable.func)
        return
    under_policy = _PolicyRun(durable, policy)
    under_policy.registered = register(under_policy.run)


class _PolicyRun:
    """A durable function run under its policy, in a streaQ worker.

    streaQ's own ``timeout`` fails a run with its own error and retries a
    timed-out run only after ``tries**2`` seconds, and streaQ retries an
    exception only if the task raises ``StreaqRetry``. So each attempt runs
    here under the policy's ``timeout`` (as in process: ``TimeoutError("timed
    out after N s")``, a sync attempt abandoned in its thread), and a
    failure in ``retry_on`` becomes ``StreaqRetry`` with the policy's delay,
    while streaQ's try count (which counts redeliveries too) allows one more.
    """

    def __init__(self, durable: Durable, policy: TaskPolicy) -> None:
        self.durable = durable
        self.policy = policy
        self.registered: RegisteredTask | None = None

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        func = self.durable.func
        if self.durable.is_async:
            return await func(*args, **kwargs)
        return await trio.to_thread.run_sync(
            functools.partial(func, *args, **kwargs), abandon_on_cancel=True
        )

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        policy = self.policy
        try:
            if policy.timeout is None:
                return await self._call(args, kwargs)
            with trio.move_on_after(policy.timeout):
                return await self._call(args, kwargs)
            raise TimeoutError(f"timed out after {policy.timeout:g} s")
        except BaseException as failure:
            if (
                isinstance(failure, (trio.Cancelled, StreaqRetry))
                or not isinstance(failure, policy.retry_on)
                or self.registered is None
            ):
                raise
            tries = self.registered.context.tries
            if tries > policy.retries:
                raise
            delay = policy.delay(tries + 1)
            logger.warning(
                "durable task %s (%s) failed on attempt %d of %d; retrying in %gs: %s",
                self.durable.name,
                self.registered.context.task_id,
                tries,
                policy.retries + 1,
                delay,
                format_error(failure),
            )
            raise StreaqRetry(
                f"attempt {tries} of {policy.retries + 1} failed, retrying in {delay:g}s: "
                f"{format_error(failure)}",
                delay=timedelta(seconds=delay),
            ) from failure
