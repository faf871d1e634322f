"""``python -m trio_background MODULE:APP``: serve an app from a shell.

Exit status: 0 after an orderly shutdown (whatever the report says: the
report is the place for that), 2 for bad arguments or an app that cannot be
loaded, 1 if the server failed.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._serve import serve

__all__ = ["load_app", "main"]

_BIND_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def load_app(spec: str) -> Any:
    """Import ``MODULE:ATTRIBUTE`` (the attribute may be dotted).

    Raises:
        ValueError: The spec is malformed, the module cannot be imported, or
            the attribute does not exist (the message says which).
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected MODULE:APP (for example examples.basic:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ValueError(
                f"cannot import module {module_name!r}: no such module (run from the folder "
                "that contains it, or check the name)"
            ) from exc
        raise
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not an ASGI app (got {type(target).__qualname__})")
    return target


def _bind_failure(exc: BaseException) -> str | None:
    """The reason, if ``exc`` is (a group of only) failures to bind the socket."""
    if isinstance(exc, BaseExceptionGroup):
        group: BaseExceptionGroup[BaseException] = exc  # pyright: ignore[reportUnknownVariableType]
        failures = [_bind_failure(e) for e in group.exceptions]
        if failures and all(failures):
            return failures[0]
        return None
    if isinstance(exc, OSError) and exc.errno in _BIND_ERRNOS:
        return f"{exc.strerror} (choose another --bind)"
    return None


def _bind(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            "expected HOST:PORT with a port from 0 to 65535, for example 127.0.0.1:8000; "
            f"got {value!r}"
        )
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {value}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_background",
        description="Serve an ASGI app with Hypercorn's trio worker and background tasks; "
        "on SIGINT/SIGTERM, drain or cancel them by one deadline and report each task.",
    )
    parser.add_argument("app", help="the app to serve, as MODULE:APP")
    parser.add_argument("--bind", type=_bind, default="127.0.0.1:8000", help="HOST:PORT")
    parser.add_argument(
        "--mode",
        choices=["drain", "cancel"],
        default=None,
        help="shutdown mode (default: the middleware's, drain)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long a drain may take (default: the middleware's, 30)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log each request to stderr (off by default, as in Hypercorn: it costs "
        "about as much per request as a trivial endpoint)",
    )
    parser.add_argument(
        "--report-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the shutdown report as JSON to PATH",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        app = load_app(args.app)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = Config()
    config.bind = [args.bind]
    if args.access_log:
        config.accesslog = "-"
    # Hypercorn writes its own logs to stderr through handlers it sets up when
    # its logger is first made; stop them also reaching the root handler
    # above, which would print each line twice.
    config.log  # noqa: B018 - makes Hypercorn's loggers now
    for name in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).propagate = False
    try:
        report = trio.run(
            partial(serve, app, config, mode=args.mode, drain_timeout=args.drain_timeout)
        )
    except (OSError, BaseExceptionGroup) as exc:
        failure = _bind_failure(exc)
        if failure is None:
            raise
        parser.exit(2, f"{parser.prog}: error: cannot listen on {args.bind}: {failure}\n")
    if args.report_json is not None:
        args.report_json.write_text(report.to_json() + "\n")
    return 0
