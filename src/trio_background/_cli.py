"""``python -m trio_background MODULE:APP``: serve an app from a shell.

Hypercorn's own options (the same names, applied to Hypercorn's ``Config``,
with ``--config`` read by Hypercorn's loader: TOML, ``file:`` Python file or
``python:`` module; options on the command line win) plus ours: the
shutdown policy, the report file, the readiness delay, ``--factory``,
``--backend`` and ``--reload``. Everything that can be wrong is checked
before serving.

Habits from other servers get a hint rather than a bare "unrecognized
arguments": ``--port``/``--host`` (uvicorn's) name the ``--bind`` to write.

``--reload`` (development) serves through the ``--workers`` parent, which
replaces its workers when a source file changes (see ``_workers``): running
tasks finish in the old process, up to the drain deadline, while the new
code serves.

Exit status: 0 after an orderly shutdown (whatever the report says: the
report is the place for that), 2 for bad arguments, an app that cannot be
loaded, a report path that cannot be written or an address that cannot be
bound, 1 if the server failed, the report could not be written at the end,
or (``--workers``) a worker process died, was killed or left no report.

Signals: from the start until the report is written, SIGINT and SIGTERM
never kill the process. The first begins shutdown, the next ones cut the
drain short, and any after the server stopped are ignored, so the report
is always written and the exit status stays 0.

Exit: once the report is written (and fsynced) and the logs flushed, the
process runs its atexit handlers (an OpenTelemetry exporter's flush, say)
and leaves with ``os._exit``: interpreter teardown of all that is still
alive (thousands of cut requests' objects, abandoned threads) took up to
1.5 s on a loaded machine, past the deadline + 1 s that an orchestrator's
grace period allows for.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import errno
import importlib.metadata
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import trio
from hypercorn.__main__ import _load_config  # pyright: ignore[reportPrivateUsage]
from hypercorn.utils import write_pid_file

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._loading import LoadError, check_asgi, load_object
from ._report_file import ReportFile, render
from ._serve import ShutdownControl, serve_middleware, unhook_signal_wakeup, watch_signals, wrap
from ._supervisor import check_timeout

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

    from hypercorn.config import Config

    from ._middleware import BackgroundTasksMiddleware

__all__ = ["configure_logging", "leave", "main"]

PROG = "python -m trio_background"
_BIND_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}
# The process id tells workers' lines apart (Hypercorn's lines carry it too).
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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
    if value.startswith(("unix:", "fd://")):
        if value.startswith("fd://") and not value[5:].isdigit():
            raise argparse.ArgumentTypeError(f"expected fd://NUMBER, got {value!r}")
        return value
    host, sep, port = value.replace("[", "").replace("]", "").rpartition(":")
    if sep and (not host or not port.isdigit() or not 0 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(
            "expected HOST:PORT with a port from 0 to 65535 (for example 127.0.0.1:8000), "
            f"HOST, unix:PATH or fd://NUMBER; got {value!r}"
        )
    return value


def _seconds(what: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds, got {value!r}"
            ) from None
        try:
            return check_timeout(seconds, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got {value!r}")
    return int(value)


def _verify_mode(value: str) -> ssl.VerifyMode:
    try:
        return ssl.VerifyMode[value]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(m.name for m in ssl.VerifyMode)}, got {value!r}"
        ) from None


def _access_target(value: str) -> str:
    if value != "-" and ":" in value and not value.startswith(("/", ".")):
        # nargs="?" would otherwise take MODULE:APP given after the flag.
        raise argparse.ArgumentTypeError(
            f"expected - (stdout) or a file PATH, got {value!r}, which looks like the app: "
            "give MODULE:APP first, or write --access-log - before it"
        )
    return value


def _version() -> str:
    def of(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a tree
            return "unknown"

    python = ".".join(str(part) for part in sys.version_info[:3])
    return (
        f"trio-background {of('trio-background')} (Hypercorn {of('hypercorn')}, "
        f"trio {of('trio')}, Python {python})"
    )


# Other servers' options that this one spells differently: each fails with
# the command line to write instead.
def _port_hint(value: str) -> str:
    return (
        f"there is no --port: give host and port together, as Hypercorn does: "
        f"--bind 127.0.0.1:{value} (or --bind 0.0.0.0:{value} to listen on every interface)"
    )


def _host_hint(value: str) -> str:
    host = f"[{value}]" if ":" in value else value
    return f"there is no --host: give host and port together, as Hypercorn does: --bind {host}:8000"


class _Hint(argparse.Action):
    """An option another server has: fail with the command line to write instead."""

    def __init__(self, *args: Any, hint: Callable[[str], str], **kwargs: Any) -> None:
        self._hint = hint
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(self._hint(values if isinstance(values, str) else ""))


def _trio_only(value: str) -> str:
    if value != "trio":
        raise argparse.ArgumentTypeError(
            f"trio-background runs on Hypercorn's trio worker only, got {value!r}"
        )
    return value


# Hypercorn's options: (flags, Config attribute, argparse keywords). The
# names, short flags and meanings are Hypercorn's own (hypercorn/__main__.py).
_HYPERCORN: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("-b", "--bind"), "bind", {"action": "append", "type": _bind, "metavar": "ADDRESS",
        "help": "HOST:PORT, HOST, unix:PATH or fd://NUMBER to listen on (repeatable; "
        "default 127.0.0.1:8000)"}),
    (("--insecure-bind",), "insecure_bind", {"action": "append", "type": _bind,
        "metavar": "ADDRESS", "help": "an address served without TLS (repeatable)"}),
    (("--quic-bind",), "quic_bind", {"action": "append", "type": _bind, "metavar": "ADDRESS",
        "help": "a UDP address for HTTP/3 (repeatable; needs aioquic)"}),
    (("-w", "--workers"), "workers", {"type": _workers, "metavar": "N",
        "help": "worker processes on shared sockets (default 1); a signal to this process "
        "shuts them all down by one deadline and writes one report"}),
    (("--certfile",), "certfile", {"help": "TLS certificate file"}),
    (("--keyfile",), "keyfile", {"help": "TLS key file"}),
    (("--keyfile-password",), "keyfile_password", {"help": "password of the key file"}),
    (("--ca-certs",), "ca_certs", {"help": "CA certificates file (client certificates)"}),
    (("--ciphers",), "ciphers", {"help": "TLS ciphers"}),
    (("--verify-mode",), "verify_mode", {"type": _verify_mode,
        "help": "TLS verify mode for client certificates (an ssl.VerifyMode name)"}),
    (("--root-path",), "root_path", {"help": "the ASGI root_path"}),
    (("--server-name",), "server_names", {"action": "append", "metavar": "NAME",
        "help": "a host name to serve; others get 404 (repeatable)"}),
    (("--keep-alive",), "keep_alive_timeout", {"type": float, "metavar": "SECONDS",
        "help": "how long idle connections stay open"}),
    (("--read-timeout",), "read_timeout", {"type": int, "metavar": "SECONDS",
        "help": "time out reads on TCP sockets"}),
    (("--backlog",), "backlog", {"type": int, "help": "pending connections queue length"}),
    (("--graceful-timeout",), "graceful_timeout", {"type": float, "metavar": "SECONDS",
        "help": "replaced at shutdown by the time until the batch deadline + 1 s (in-flight "
        "requests are cut then); use --drain-timeout"}),
    (("--max-requests",), "max_requests", {"type": int, "metavar": "N",
        "help": "stop (and, with --workers, restart) a worker after N requests; its "
        "batches drain by the same deadline"}),
    (("--max-requests-jitter",), "max_requests_jitter", {"type": int, "metavar": "N",
        "help": "add randint(0, N) to --max-requests"}),
    (("--websocket-ping-interval",), "websocket_ping_interval", {"type": float,
        "metavar": "SECONDS", "help": "ping websockets this often"}),
    (("--access-logfile",), "accesslog", {"metavar": "PATH",
        "help": "access log target (- for stdout)"}),
    (("--access-logformat",), "access_log_format", {"metavar": "FORMAT",
        "help": "access log format"}),
    (("--error-logfile", "--log-file"), "errorlog", {"metavar": "PATH",
        "help": "error log target (- for stderr, the default)"}),
    (("--log-config",), "logconfig", {"metavar": "PATH",
        "help": "a logging config file (json: or toml: prefix for those formats)"}),
    (("--statsd-host",), "statsd_host", {"metavar": "HOST:PORT", "help": "statsd server"}),
    (("--statsd-prefix",), "statsd_prefix", {"help": "prefix of statsd metrics"}),
    (("-p", "--pid"), "pid_path", {"metavar": "PATH", "help": "write the process id here"}),
    (("-u", "--user"), "user", {"type": int, "help": "user id to own unix sockets"}),
    (("-g", "--group"), "group", {"type": int, "help": "group id to own unix sockets"}),
    (("-m", "--umask"), "umask", {"type": int, "help": "umask for unix sockets"}),
    (("-k", "--worker-class"), "worker_class", {"type": _trio_only,
        "help": "trio (the only one trio-background runs on)"}),
]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s MODULE:APP [options]",
        description="Serve an ASGI app with Hypercorn's trio worker and background tasks; "
        "on SIGINT/SIGTERM, drain or cancel them by one deadline and report each task.",
    )
    parser.add_argument("app", help="the app to serve, as MODULE:APP")
    ours = parser.add_argument_group("trio-background options")
    ours.add_argument(
        "--mode", choices=["drain", "cancel"], default=None,
        help="shutdown mode (default: the middleware's, drain)",
    )  # fmt: skip
    ours.add_argument(
        "--drain-timeout", type=_seconds("--drain-timeout"), default=None, metavar="SECONDS",
        help="how long a drain may take, from the first signal (default: the middleware's, 30)",
    )  # fmt: skip
    ours.add_argument(
        "--shutdown-delay", type=_seconds("--shutdown-delay"), default=0.0, metavar="SECONDS",
        help="after the first signal, keep accepting this long while health() answers 503, "
        "so load balancers stop routing here first (default 0)",
    )  # fmt: skip
    ours.add_argument(
        "--freeze-gc", action="store_true",
        help="when shutdown begins, gc.freeze() the heap so that cutting thousands of "
        "pending tasks does not pay full garbage collections over all of them "
        "(process-wide; off by default)",
    )  # fmt: skip
    ours.add_argument(
        "--report-json", type=Path, default=None, metavar="PATH",
        help="write the shutdown report as JSON to PATH (checked at startup, replaced "
        "atomically; a symlink is refused)",
    )  # fmt: skip
    ours.add_argument(
        "--factory", action="store_true",
        help="MODULE:APP names a function that returns the app; call it",
    )  # fmt: skip
    ours.add_argument(
        "--backend", default=None, metavar="MODULE:NAME",
        help="a durable backend object for the middleware (serve(backend=...))",
    )  # fmt: skip
    ours.add_argument(
        "--log-level", default="info", type=str.lower, choices=_LOG_LEVELS,
        help="log level of trio-background's lines (default info); Hypercorn's own log "
        "keeps its level (loglevel in --config), so its 'Running on' line always shows",
    )  # fmt: skip
    ours.add_argument(
        "--access-log", nargs="?", const="-", default=None, type=_access_target,
        metavar="TARGET",
        help="log each request to TARGET: - (or nothing) for stdout, as Hypercorn's "
        "--access-logfile -, or a file PATH (off by default, as in Hypercorn: it costs about "
        "as much per request as a trivial endpoint)",
    )  # fmt: skip
    ours.add_argument(
        "--reload", action="store_true",
        help="for development: when a source file changes, start new worker processes at "
        "once and retire the old ones as the first signal does: their running tasks finish "
        "there, up to --drain-timeout (--mode cancel cuts them), while the new code serves; "
        "an edit that cannot start leaves the old code serving (default workers: 1)",
    )  # fmt: skip
    ours.add_argument("--version", action="version", version=_version())
    # Other servers' habits, hidden from --help: each fails with a hint.
    ours.add_argument("--port", action=_Hint, hint=_port_hint, help=argparse.SUPPRESS)
    ours.add_argument("--host", action=_Hint, hint=_host_hint, help=argparse.SUPPRESS)
    theirs = parser.add_argument_group(
        "Hypercorn options", "the same as Hypercorn's own; see its documentation"
    )
    theirs.add_argument(
        "-c", "--config", default=None, metavar="PATH",
        help="Hypercorn config: a TOML file, file:PATH.py or python:MODULE; options given "
        "here win over it",
    )  # fmt: skip
    for flags, attribute, keywords in _HYPERCORN:
        theirs.add_argument(*flags, dest=attribute, default=argparse.SUPPRESS, **keywords)
    return parser


def _fail(message: str) -> NoReturn:
    """Exit 2 with one line (no usage: the arguments parsed, their content is wrong)."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(2)


def _config(args: argparse.Namespace) -> Config:
    try:
        config = _load_config(args.config)
    except Exception as exc:
        _fail(f"cannot read --config {args.config}: {type(exc).__qualname__}: {exc}")
    given = vars(args)
    for _, attribute, _ in _HYPERCORN:
        if attribute in given:
            setattr(config, attribute, given[attribute])
    if args.access_log is not None:
        config.accesslog = args.access_log
    config.worker_class = "trio"
    workers = cast("object", config.workers)  # a config file may hold anything
    if not isinstance(workers, int) or workers < 1:
        _fail(f"workers must be a number of processes >= 1, got {workers!r}")
    return config


def configure_logging(config: Config, level: str) -> None:
    """Our log lines on stderr at ``level``; Hypercorn's through its own handlers."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    # Hypercorn writes its own logs through handlers it sets up when its
    # logger is first made; stop them also reaching the root handler above,
    # which would print each line twice.
    config.log  # noqa: B018 - makes Hypercorn's loggers now
    for name in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).propagate = False


class _SignalGuard:
    """SIGINT/SIGTERM never kill the process from ``__enter__`` until it exits.

    The server watches the signals itself while it runs; a signal that comes
    before (while it starts) is kept in ``pending`` (its arrival, a
    :func:`time.monotonic` time) and counts as the first once it watches;
    after it (while the report is written) signals change nothing; and from
    ``__exit__`` on they are ignored: the process has nothing left but to exit.
    """

    def __init__(self) -> None:
        self.pending: float | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = time.monotonic()

    def __enter__(self) -> _SignalGuard:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def _load(args: argparse.Namespace) -> BackgroundTasksMiddleware:
    try:
        app = check_asgi(load_object(args.app), args.app, factory=args.factory)
        backend = None if args.backend is None else load_object(args.backend, what="NAME")
    except LoadError as exc:
        sys.stderr.write(exc.user_traceback)
        _fail(str(exc))
    try:
        return wrap(app, backend)
    except TypeError as exc:  # the backend is not one, or the app is wrapped already
        _fail(f"--backend {args.backend}: {exc}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    config = _config(args)
    if args.reload and args.shutdown_delay > 0:
        _fail(
            "--reload cannot be used with --shutdown-delay: after each change the old worker "
            "would keep accepting, and answering with the old code, for the delay. "
            "--shutdown-delay is for load balancers in production, --reload for development: "
            "drop one of them"
        )
    report_file: ReportFile | None = None
    if args.report_json is not None:
        try:
            report_file = ReportFile.check(args.report_json)
        except ValueError as exc:
            _fail(str(exc))
    middleware = _load(args)
    if config.pid_path is not None:
        write_pid_file(config.pid_path)
    run_id = uuid.uuid4().hex
    started_at = _now()
    ok = True
    # Workers mode logs through the root logger only (basicConfig below).
    with _SignalGuard() as guard:
        try:
            if config.workers > 1 or args.reload:
                data, ok = _serve_workers(args, config, lambda: guard.pending)
            else:
                configure_logging(config, args.log_level)
                control = ShutdownControl(
                    middleware,
                    args.mode,
                    args.drain_timeout,
                    args.shutdown_delay,
                    freeze_gc=args.freeze_gc,
                )
                watch = partial(watch_signals, signalled_before=lambda: guard.pending)
                report = trio.run(
                    unhook_signal_wakeup,
                    partial(serve_middleware, middleware, config, control, watch),
                )
                data = report.to_dict()
        except (OSError, BaseExceptionGroup) as exc:
            failure = _bind_failure(exc)
            if failure is None:
                raise
            _fail(f"cannot listen on {', '.join(config.bind)}: {failure}")
        if report_file is not None:
            meta = {"run_id": run_id, "started_at": started_at, "stopped_at": _now(),
                    "pid": os.getpid()}  # fmt: skip
            try:
                report_file.write(render({**meta, **data}))
            except OSError as exc:
                logging.getLogger("trio_background").error(
                    "cannot write the report to --report-json %s: %s (the summary above is "
                    "all that is left of it)", report_file.path, exc,
                )  # fmt: skip
                ok = False
    return 0 if ok else 1


def leave(code: int) -> NoReturn:
    """Exit with ``code`` now: atexit handlers run, interpreter teardown does not.

    For the command line only, once the report is written and fsynced:
    tearing down what is still alive (the objects of thousands of cut
    requests, threads of abandoned tasks) is work nobody waits for, done
    after the deadline. The app's atexit handlers (an exporter's flush) and
    the logging module's flush still run, in their usual order.
    """
    try:
        atexit._run_exitfuncs()  # pyright: ignore[reportPrivateUsage]
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # closed, or a broken pipe
                stream.flush()
        os._exit(code)


def _serve_workers(
    args: argparse.Namespace, config: Config, signalled_before: Callable[[], float | None]
) -> tuple[dict[str, Any], bool]:
    from ._workers import WorkerSpec, run_workers

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    sockets = config.create_sockets()
    spec = WorkerSpec(
        app=args.app,
        factory=args.factory,
        backend=args.backend,
        mode=args.mode,
        drain_timeout=args.drain_timeout,
        shutdown_delay=args.shutdown_delay,
        freeze_gc=args.freeze_gc,
        log_level=args.log_level,
        configure_logging=configure_logging,
        config=config,
        sockets=sockets,
        reload=args.reload,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="trio-background-") as folder:
            return run_workers(spec, config.workers, Path(folder), signalled_before)
    finally:
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
            sock.close()
