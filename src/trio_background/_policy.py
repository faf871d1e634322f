"""Task policies: what a function asks of every task that runs it.

``@trio_background.task(timeout=..., retries=..., limit=..., key=...)`` puts a
:class:`TaskPolicy` on a function, which stays callable as it was. Every task
of that function, however it is added, carries the policy, and the runner
honours it (``_runner.py``); nothing here runs anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["POLICY_ATTRIBUTE", "TaskPolicy", "is_count", "task"]

F = TypeVar("F", bound=Callable[..., Any])

POLICY_ATTRIBUTE = "__trio_background_policy__"


@dataclass(frozen=True, eq=False)
class TaskPolicy:
    """The policy of a function's tasks (see :func:`task`).

    Attributes:
        timeout: Seconds per attempt, or None.
        retries: How many more attempts after a failure in ``retry_on``.
        retry_on: The exception types that are retried.
        backoff: Seconds before the first retry; doubled for each next one.
        max_backoff: The longest wait between two attempts.
        limit: How many tasks of the function may run at once in the
            process, or None.
        key: The deduplication key (a string, or a function of the task's
            arguments that returns one), or None.
        name: The function's qualified name, for messages.
    """

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 1.0
    max_backoff: float = 60.0
    limit: int | None = None
    key: str | Callable[..., object] | None = None
    name: str = ""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (2 for the first retry)."""
        return float(min(self.backoff * 2 ** (attempt - 2), self.max_backoff))

    def key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The task's deduplication key, or None.

        Raises:
            TypeError: The key function returned something else than a string.
        """
        key = self.key
        if key is None or isinstance(key, str):
            return key
        value = key(*args, **kwargs)
        if not isinstance(value, str):
            raise TypeError(
                f"the key function of {self.name} returned {type(value).__qualname__}, "
                "not a string: return a str such as f'welcome:{user_id}'"
            )
        return value


# Checks of what a caller passed, whatever its annotations promised.
def is_count(value: object, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) >= ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_exception_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _seconds(name: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"task({name}=...) must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"task({name}=...) must be a finite number of seconds {bound}, got {value!r}"
        )
    return float(value)


def task(
    *,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    limit: int | None = None,
    key: str | Callable[..., object] | None = None,
) -> Callable[[F], F]:
    """Give a function a policy for every background task that runs it.

    The function stays callable as it was::

        @trio_background.task(retries=3, backoff=2, limit=5, key=lambda user: f"welcome:{user}")
        async def send_welcome(user: str) -> None: ...

    Args:
        timeout: Seconds per attempt: an attempt that runs longer is
            cancelled (a sync one abandoned in its thread) and fails with
            ``TimeoutError("timed out after N s")``.
        retries: After a failure whose exception is one of ``retry_on``, run
            again, up to this many more times.
        retry_on: The exception type(s) that are retried.
        backoff: Seconds before the first retry; attempt ``n`` waits
            ``min(backoff * 2**(n-2), max_backoff)`` (no jitter: the same
            scenario gives the same report).
        max_backoff: The longest wait between attempts.
        limit: At most this many tasks of the function run at once in the
            process (async and sync, across every batch); the others wait
            for a slot, holding their batch's sequence.
        key: While a task with the same key is pending or running in this
            process, ``add_task``/``start_soon`` return that task instead of
            adding a second. A string, or a function given the task's
            arguments that returns one.

    Returns:
        A decorator that puts the policy on the function and returns it.

    Raises:
        TypeError: An option has the wrong type, or the decorated object
            cannot carry a policy.
        ValueError: An option is out of range.

    No attempt starts after the shutdown deadline: a task waiting to retry
    then ends with its last failure, and its record says no retry was
    allowed; one waiting for a ``limit`` slot ends ``skipped``.
    """
    checked_timeout = None if timeout is None else _seconds("timeout", timeout, allow_zero=False)
    if not is_count(retries, 0):
        raise ValueError(f"task(retries=...) must be an int >= 0, got {retries!r}")
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for kind in kinds:
        if not _is_exception_type(kind):
            raise TypeError(
                f"task(retry_on=...) takes exception types, got {kind!r}; "
                "e.g. retry_on=(ConnectionError, TimeoutError)"
            )
    checked_backoff = _seconds("backoff", backoff, allow_zero=True)
    checked_max = _seconds("max_backoff", max_backoff, allow_zero=True)
    if checked_max < checked_backoff:
        raise ValueError(
            f"task(max_backoff=...) must be >= backoff ({checked_backoff:g}), got {max_backoff!r}"
        )
    if limit is not None and not is_count(limit, 1):
        raise ValueError(f"task(limit=...) must be an int >= 1 or None, got {limit!r}")
    if key is not None and not isinstance(key, str) and not callable(key):
        raise TypeError(
            f"task(key=...) must be a string or a function of the task's arguments, got {key!r}"
        )

    def decorate(func: F) -> F:
        if not callable(func):
            raise TypeError(
                f"@trio_background.task(...) decorates a function, got {type(func).__qualname__}"
            )
        policy = TaskPolicy(
            timeout=checked_timeout,
            retries=retries,
            retry_on=kinds,
            backoff=checked_backoff,
            max_backoff=checked_max,
            limit=limit,
            key=key,
            name=getattr(func, "__qualname__", type(func).__qualname__),
        )
        try:
            setattr(func, POLICY_ATTRIBUTE, policy)
        except (AttributeError, TypeError):
            raise TypeError(
                f"@trio_background.task(...) cannot put a policy on {policy.name} "
                f"({type(func).__qualname__} takes no attributes): decorate a plain function"
            ) from None
        return func

    return decorate
