"""Whole-process test helpers: a server process whose stderr is read as it comes.

These use real time (a process cannot share a MockClock): waits are on real
events (a line printed, a process ending) with generous bounds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """A server process whose stderr is read as it comes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = ""
        self._seen = 0

    async def wait_for(self, pattern: str, *, new: bool = False) -> re.Match[str]:
        """The first match of ``pattern`` in stderr (``new``: after the last match)."""
        assert self.process.stderr is not None
        start = self._seen if new else 0
        try:
            with trio.fail_after(30):
                while (match := re.compile(pattern).search(self.output, start)) is None:
                    chunk = await self.process.stderr.receive_some()
                    if not chunk:
                        raise AssertionError(f"process ended before {pattern!r}:\n{self.output}")
                    self.output += chunk.decode()
        except trio.TooSlowError:
            # Say what the process did print, and leave no process behind
            # for the next test to trip over.
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"no {pattern!r} within 30 s:\n{self.output}") from None
        self._seen = match.end()
        return match

    async def url(self) -> str:
        return (await self.wait_for(r"Running on (https?://\S+) ")).group(1)

    async def finish(self) -> int:
        assert self.process.stderr is not None
        with trio.fail_after(30):
            while chunk := await self.process.stderr.receive_some():
                self.output += chunk.decode()
            return await self.process.wait()


async def start(*args: str, env: dict[str, str] | None = None) -> Server:
    process = await trio.lowlevel.open_process(
        [sys.executable, *args],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
    )
    return Server(process)


async def start_cli(
    *args: str, env: dict[str, str] | None = None, app: str = "tests.cli_app:app"
) -> Server:
    """``python -m trio_background APP ARGS`` on 127.0.0.1:0 unless bound."""
    bind = () if any(a in ("-b", "--bind", "-c", "--config") for a in args) else (
        "--bind", "127.0.0.1:0",
    )  # fmt: skip
    return await start("-m", "trio_background", app, *bind, *args, env=env)
