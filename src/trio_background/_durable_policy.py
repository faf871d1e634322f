"""The policy of a durable function, shared by the durable backends.

``@backend.task(timeout=..., retries=..., ...)`` takes the options of
:func:`trio_background.task` and means the same: the function gets that
policy (checked by :func:`trio_background.task` itself, with its rules and
messages), and the backend maps it onto its engine's own settings. A
function already decorated with ``@trio_background.task(...)`` brings its
policy along. What an engine cannot honour exactly is refused with a
message naming the option, the reason and what to do instead, built here so
that every backend words it the same way.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ._policy import POLICY_ATTRIBUTE, TaskPolicy, task

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Refusal", "policy_of", "put_policy", "refuse", "requested_policy"]

# trio_background.task's defaults: an option left at its default was not given.
_DEFAULTS: dict[str, object] = {
    "timeout": None,
    "retries": 0,
    "retry_on": (Exception,),
    "backoff": 1.0,
    "max_backoff": 60.0,
    "limit": None,
    "key": None,
}


@dataclasses.dataclass(frozen=True)
class Refusal:
    """An option an engine cannot honour: which, why, and what to do instead."""

    option: str
    why: str
    instead: str


def _is_default(option: str, value: object) -> bool:
    default = _DEFAULTS[option]
    # By type too: retries=False is not retries=0 (trio_background.task refuses it).
    return value is default or (type(value) is type(default) and value == default)


def policy_of(func: Callable[..., Any]) -> TaskPolicy | None:
    """The policy ``func`` carries (from :func:`trio_background.task`), or None."""
    policy = getattr(func, POLICY_ATTRIBUTE, None)
    return policy if isinstance(policy, TaskPolicy) else None


def requested_policy(func: Callable[..., Any], options: dict[str, Any]) -> TaskPolicy | None:
    """The policy ``func`` is registered with: from ``options``, else the one it carries.

    ``options`` are :func:`trio_background.task`'s, as ``backend.task`` got
    them; those left at their defaults count as not given. The policy is
    not put on ``func`` yet (see :func:`put_policy`): the engine may still
    refuse it.

    Raises:
        TypeError: ``func`` already carries a policy and other options
            were given (the same options again are that policy); or an
            option has the wrong type (trio_background.task's message).
        ValueError: An option is out of range (trio_background.task's message).
    """
    given = {name: value for name, value in options.items() if not _is_default(name, value)}
    carried = policy_of(func)
    if not given:
        return carried
    name = getattr(func, "__qualname__", repr(func))

    # trio_background.task checks the options and builds the policy; it puts
    # it on whatever it decorates, so let it decorate a stand-in.
    def stand_in() -> None: ...

    task(**given)(stand_in)
    built = policy_of(stand_in)
    if built is None:  # pragma: no cover - task() always puts one
        raise RuntimeError("trio_background.task put no policy on the function")
    built = dataclasses.replace(built, name=name)
    if carried is None:
        return built
    if _options(carried) == _options(built):
        return carried  # the same function on a second backend, with the same options
    raise TypeError(
        f"backend.task got {', '.join(f'{option}=' for option in given)} for {name}, which "
        "already has another policy from @trio_background.task(...): give the options in "
        "one place"
    )


def _options(policy: TaskPolicy) -> tuple[object, ...]:
    return tuple(getattr(policy, field.name) for field in dataclasses.fields(policy))


def put_policy(func: Callable[..., Any], policy: TaskPolicy | None) -> None:
    """Put ``policy`` on ``func`` (as ``@trio_background.task`` does), once the engine took it."""
    if policy is not None and policy_of(func) is not policy:
        setattr(func, POLICY_ATTRIBUTE, policy)


def refuse(engine: str, policy: TaskPolicy, refusals: list[Refusal]) -> None:
    """Raise for the first option ``engine`` cannot honour, if any.

    Raises:
        TypeError: ``"<engine> cannot honour <option>= on <function>: <why>;
            <instead>"``.
    """
    if refusals:
        first = refusals[0]
        raise TypeError(
            f"{engine} cannot honour {first.option}= on {policy.name}: {first.why}; {first.instead}"
        )
