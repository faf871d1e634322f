"""Loading what the command line names: ``MODULE:ATTRIBUTE``, checked before serving.

Everything here fails with :class:`LoadError`, whose message is one line
that says what was wrong and what to do; when the user's own code raised
(on import, or in a ``--factory``), the error also carries that code's
traceback, without the import machinery's frames, to print once.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from typing import Any

__all__ = ["LoadError", "check_asgi", "load_object"]


class LoadError(Exception):
    """The app (or backend) named on the command line cannot be used.

    Attributes:
        user_traceback: The traceback of the user's code that raised, or "".
    """

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback


def _user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback, from the first frame that is not ours or importlib's."""
    ours = {os.path.abspath(__file__), os.path.abspath(importlib.__file__)}
    summary = traceback.extract_tb(exc.__traceback__)
    frames = [
        frame
        for frame in summary
        if os.path.abspath(frame.filename) not in ours
        and not frame.filename.startswith("<frozen importlib")
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines.extend(traceback.StackSummary.from_list(frames).format())
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__qualname__}: {text}" if text else type(exc).__qualname__


def load_object(spec: str, *, what: str = "APP", example: str = "examples.basic:app") -> Any:
    """Import ``MODULE:ATTRIBUTE`` (the attribute may be dotted), from the working folder.

    Raises:
        LoadError: The spec is malformed, the module is missing or raised on
            import (with its traceback), or the attribute does not exist.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise LoadError(f"expected MODULE:{what} (for example {example}), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise LoadError(
                f"cannot import module {module_name!r}: no such module (run from the folder "
                "that contains it, or check the name)"
            ) from None
        raise LoadError(
            f"cannot import module {module_name!r}: {_describe(exc)} (traceback above)",
            _user_traceback(exc),
        ) from None
    except Exception as exc:
        raise LoadError(
            f"cannot import module {module_name!r}: {_describe(exc)} (traceback above)",
            _user_traceback(exc),
        ) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


def _positional_count(target: Any) -> int | None:
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds and p.default is p.empty)


def _is_asgi(target: Any) -> bool:
    if inspect.isclass(target):
        return False
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - the method itself is checked
    return call is not None and inspect.iscoroutinefunction(call)


def check_asgi(target: Any, spec: str, *, factory: bool) -> Any:
    """The ASGI app ``target`` is (or, with ``factory``, builds).

    Accepted: ``async def app(scope, receive, send)``, or an object whose
    ``__call__`` is such a coroutine function (FastAPI, Starlette, ...).

    Raises:
        LoadError: ``target`` is a WSGI app, a class, a sync function, or not
            callable (the message names the fix); the factory raised.
    """
    origin = spec
    if factory:
        if not callable(target):
            raise LoadError(
                f"--factory: {spec} is not callable (got {type(target).__qualname__}); "
                "name the function that builds the app"
            )
        if _is_asgi(target):
            raise LoadError(
                f"--factory: {spec} is an ASGI app itself, not a function that builds one: "
                "drop --factory"
            )
        try:
            target = target()
        except Exception as exc:
            raise LoadError(
                f"the factory {spec} raised {_describe(exc)} (traceback above)",
                _user_traceback(exc),
            ) from None
        spec = f"what {spec}() returned"
    if _is_asgi(target):
        return target
    got = type(target).__qualname__
    if not callable(target):
        raise LoadError(f"{spec} is not an ASGI app (got {got})")
    if inspect.isclass(target):
        raise LoadError(
            f"{spec} is a class, not an ASGI app: name an instance (app = {target.__name__}()), "
            "or pass --factory to have it called"
        )
    count = _positional_count(target)
    if count == 2:
        raise LoadError(
            f"{spec} is a WSGI app; trio-background serves ASGI apps (async def app(scope, "
            "receive, send)): port it to an ASGI framework such as Starlette or FastAPI, or "
            f"serve it without background tasks: hypercorn --worker-class trio {origin}"
        )
    if count == 0 and not factory:
        raise LoadError(
            f"{spec} is not an ASGI app: it takes no arguments; if it builds the app, "
            "pass --factory"
        )
    raise LoadError(
        f"{spec} is not an ASGI app: expected async def app(scope, receive, send) or an "
        f"object with such an async __call__, got {got}"
    )
