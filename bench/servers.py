"""Server processes for the benchmark: start, find, measure, stop.

Each server is a separate process group started by the benchmark, bound to
``127.0.0.1:0`` (the kernel picks a free port; the port is read back from the
server's log), and always stopped: :meth:`Server.stop` escalates from
SIGTERM to SIGKILL of the group, and :class:`Servers` stops every server it
started on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
import trio

from bench.load import get_json_sync

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

__all__ = ["ROOT", "Server", "ServerError", "Servers", "Variant"]

ROOT = Path(__file__).resolve().parent.parent
_RUNNING_ON = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


class ServerError(Exception):
    """A server did not start, or did not answer as expected."""


@dataclass(frozen=True)
class Variant:
    """One library (or framework feature) under test.

    Attributes:
        key: Short name used in JSON and on the command line.
        label: Name in the table.
        module: The app's module (``app`` in it is served).
        worker: Hypercorn worker class it is served with.
        requires: Modules that must be importable for it to run.
    """

    key: str
    label: str
    module: str
    worker: str
    requires: tuple[str, ...]

    def missing(self) -> str | None:
        """The first required module that cannot be imported, or None."""
        import importlib.util

        for name in self.requires:
            if importlib.util.find_spec(name) is None:
                return name
        return None


class Server:
    """One server process (group), from start to a bounded stop.

    Args:
        name: For logs and errors.
        argv: The command; it must bind ``127.0.0.1:0`` and log Hypercorn's
            "Running on" line.
        log_path: Where its stdout and stderr go.
        serving_is_child: The process that serves is a child of the one
            started (Hypercorn's CLI with one worker), not the process itself.
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, *, serving_is_child: bool
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.serving_is_child = serving_is_child
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServerError(f"{self.name} is not started")
        return self._process.pid

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait until the port is in the log and ``GET /none`` answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ServerError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            if not self.port:
                match = _RUNNING_ON.search(self.log_path.read_text(errors="replace"))
                if match:
                    self.port = int(match.group(1))
            if self.port:
                with contextlib.suppress(OSError, trio.TooSlowError, ValueError):
                    self.get_json("/none", timeout=1.0)
                    return
            time.sleep(0.05)
        raise ServerError(f"{self.name} did not start in {timeout:g}s:\n{self.log_tail()}")

    def get_json(self, path: str, *, timeout: float = 10.0) -> Any:
        return get_json_sync(self.port, path, timeout=timeout)

    def serving_process(self) -> psutil.Process:
        """The process that runs the app (for RSS)."""
        process = psutil.Process(self.pid)
        if not self.serving_is_child:
            return process
        for child in process.children():
            if "resource_tracker" not in " ".join(child.cmdline()):
                return child
        raise ServerError(f"{self.name}: no worker process found under pid {self.pid}")

    def rss(self) -> int:
        return int(self.serving_process().memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self.serving_process().cpu_times()
        return float(times.user + times.system)

    def terminate(self, timeout: float) -> tuple[float, bool]:
        """SIGTERM the started process; wait for it to exit.

        Returns:
            Seconds from the signal to the exit, and whether it exited by
            itself (False: it was killed at ``timeout``).
        """
        process = self._process
        if process is None:
            raise ServerError(f"{self.name} is not started")
        start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return time.perf_counter() - start, False
        elapsed = time.perf_counter() - start
        self.kill()  # the rest of its group, if anything is left
        return elapsed, True

    def kill(self) -> None:
        """SIGKILL the whole process group (only the processes it started)."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def hypercorn_argv(variant: Variant) -> list[str]:
    """Hypercorn's own CLI, one worker, as the anchors were measured."""
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        variant.worker,
        "--workers",
        "1",
        "--bind",
        "127.0.0.1:0",
        f"{variant.module}:app",
    ]


def trio_background_argv(
    variant: Variant, *, mode: str, report: Path, extra: Sequence[str] = ()
) -> list[str]:
    """``python -m trio_background`` (our CLI), as users run it, with ``extra`` options."""
    return [
        sys.executable,
        "-m",
        "trio_background",
        f"{variant.module}:app",
        "--bind",
        "127.0.0.1:0",
        "--mode",
        mode,
        "--log-level",
        "warning",
        "--report-json",
        str(report),
        *extra,
    ]


class Servers:
    """Starts servers and guarantees they are all stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._all: list[Server] = []

    def start(self, name: str, argv: list[str], *, serving_is_child: bool) -> Server:
        server = Server(name, argv, self.log_dir / f"{name}.log", serving_is_child=serving_is_child)
        self._all.append(server)
        server.start()
        return server

    def kill_all(self) -> None:
        for server in self._all:
            server.kill()

    @contextlib.contextmanager
    def session(self) -> Generator[Servers, None, None]:
        try:
            yield self
        finally:
            self.kill_all()
