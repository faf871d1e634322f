"""The worker command line: load a backend by its import path and run its worker."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

import trio

from .._loading import LoadError, load_object
from .._supervisor import check_timeout
from ._backend import StreaqBackend
from ._worker import DEFAULT_DRAIN_TIMEOUT, run_worker

__all__ = ["load_backend", "main"]


def load_backend(spec: str) -> StreaqBackend:
    """Import ``MODULE:NAME`` and return the :class:`StreaqBackend` there.

    Raises:
        ValueError: The spec is malformed, the module or attribute is
            missing, or the attribute is not a ``StreaqBackend``.
    """
    try:
        target = load_object(spec, what="BACKEND", example="examples.durable:backend")
    except LoadError as exc:
        if exc.user_traceback:
            sys.stderr.write(exc.user_traceback)
        raise ValueError(str(exc)) from None
    if not isinstance(target, StreaqBackend):
        raise ValueError(
            f"{spec} is a {type(target).__qualname__}, not a StreaqBackend: point at the "
            "backend the app's durable functions are registered on"
        )
    return target


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    try:
        return check_timeout(seconds, "--drain-timeout")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_background.streaq",
        description="Run the durable tasks of a trio-background app from Redis, on trio.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    worker = commands.add_parser(
        "worker",
        help="run a worker for a backend's registered functions",
        description="Run the functions registered on MODULE:BACKEND as streaQ tasks, until "
        "SIGINT/SIGTERM; then drain the running ones by the deadline and log the report.",
    )
    worker.add_argument("backend", help="the StreaqBackend, as MODULE:BACKEND")
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tasks run at once (default: the backend's, 16)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="how long running tasks may take after the signal "
        f"(default {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    worker.add_argument(
        "--report-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the report as JSON to PATH at exit",
    )
    worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        backend = load_backend(args.backend)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    report = trio.run(
        partial(
            run_worker,
            backend,
            concurrency=args.concurrency,
            drain_timeout=args.drain_timeout,
        )
    )
    if args.report_json is not None:
        args.report_json.write_text(report.to_json() + "\n")
    return 0
