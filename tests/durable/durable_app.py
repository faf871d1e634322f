"""The durable tests' app: a backend on the test's Redis and queue, and tasks that leave marks.

Configured by the environment (``durable_env`` sets it), so the test, the
web process and every worker process load the same backend and functions.
Each task writes a file named after its argument into ``TB_MARKS``: the
tests read those marks, and the streaQ results, to see what ran where.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from trio_background.streaq import StreaqBackend

MARKS = Path(os.environ.get("TB_MARKS", "."))

backend = StreaqBackend(
    os.environ.get("TB_REDIS_URL", "redis://127.0.0.1:6379/0"),
    queue_name=os.environ.get("TB_QUEUE", "tests"),
    # A dead worker's task goes to another one after 2 s, so the tests of
    # redelivery are quick; live workers renew their claim every 1.8 s.
    idle_timeout=2.0,
)


def _mark(name: str, text: str) -> None:
    with (MARKS / name).open("a") as file:
        file.write(f"{text} {os.getpid()}\n")


@backend.task
async def mark(name: str) -> str:
    """Leave the mark ``name``."""
    _mark(name, "done")
    return name


@backend.task
def mark_sync(name: str) -> str:
    """Leave the mark ``name``, from a worker thread."""
    _mark(name, "done")
    return name


@backend.task
async def hang_once(name: str) -> str:
    """The first run hangs until it is stopped; the next one leaves the mark."""
    first = MARKS / f"{name}.first"
    if not first.exists():
        first.write_text(f"{os.getpid()}\n")
        print(f"hang_once {name} hanging in {os.getpid()}", file=sys.stderr, flush=True)
        await trio.sleep_forever()
    _mark(name, "done")
    return name


@backend.task
async def take_a_second(name: str) -> str:
    """Takes a second (well inside any drain deadline the tests use), then leaves the mark."""
    print(f"take_a_second {name} started", file=sys.stderr, flush=True)
    await trio.sleep(1)
    _mark(name, "done")
    return name
