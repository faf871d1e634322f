"""The durable tests' app: a backend on the test's Redis and queue, and tasks that leave marks.

Configured by the environment (``durable_env`` sets it), so the test, the
web process and every worker process know the same functions under the same
names. Each task appends a line to a file named after its argument in
``TB_MARKS``: the tests read those marks, and streaQ's results, to see what
ran where.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import trio
from fastapi import FastAPI

import trio_background
from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks
from trio_background.streaq import StreaqBackend


def _marks() -> Path:
    return Path(os.environ["TB_MARKS"])


def _mark(name: str) -> None:
    with (_marks() / name).open("a") as file:
        file.write(f"done {os.getpid()}\n")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def mark(name: str) -> str:
    """Leave the mark ``name``."""
    _mark(name)
    return name


def mark_sync(name: str) -> str:
    """Leave the mark ``name``, from a worker thread."""
    _mark(name)
    return name


async def hang_once(name: str) -> str:
    """The first run hangs until it is stopped; the next one leaves the mark."""
    first = _marks() / f"{name}.first"
    if not first.exists():
        first.write_text(f"{os.getpid()}\n")
        _say(f"hang_once {name} hanging in {os.getpid()}")
        await trio.sleep_forever()
    _mark(name)
    return name


async def take_a_second(name: str) -> str:
    """Takes a second (well inside the drain deadlines the tests give it), then leaves the mark."""
    _say(f"take_a_second {name} started")
    await trio.sleep(1)  # the feature: work in a worker process, killable mid-task
    _mark(name)
    return name


def hang_sync_once(name: str) -> str:
    """Like :func:`hang_once`, in a worker thread (which trio cannot cancel, only abandon)."""
    first = _marks() / f"{name}.first"
    if not first.exists():
        first.write_text(f"{os.getpid()}\n")
        _say(f"hang_sync_once {name} hanging in {os.getpid()}")
        threading.Event().wait()
    _mark(name)
    return name


async def too_slow(name: str) -> str:
    """Never ends by itself: registered with a 1 s timeout."""
    _say(f"too_slow {name} started")
    await trio.sleep_forever()
    return name  # pragma: no cover


async def refuse(name: str) -> str:
    """Always fails."""
    raise ValueError(f"no {name}")


def _attempt(name: str) -> int:
    """Note one more attempt of ``name`` in its marks file; return its number."""
    with (_marks() / name).open("a") as file:
        file.write(f"attempt {os.getpid()}\n")
    return len((_marks() / name).read_text().splitlines())


async def flaky(name: str, failures: int) -> str:
    """Fails its first ``failures`` attempts; registered with ``retries=2``."""
    attempt = _attempt(name)
    if attempt <= failures:
        raise ValueError(f"{name} fails attempt {attempt}")
    return name


@trio_background.task(retries=2, backoff=0)
def flaky_sync(name: str, failures: int) -> str:
    """:func:`flaky` in a thread, its policy from ``@trio_background.task``."""
    attempt = _attempt(name)
    if attempt <= failures:
        raise ValueError(f"{name} fails attempt {attempt}")
    return name


async def slow_once(name: str) -> str:
    """The first attempt hangs (its ``timeout`` ends it, and it is retried); the next returns."""
    if _attempt(name) == 1:
        await trio.sleep_forever()
    return name


FUNCTIONS = (mark, mark_sync, hang_once, take_a_second, hang_sync_once, refuse, flaky_sync)


def make_backend() -> StreaqBackend:
    """A backend on the current environment's Redis and queue, knowing :data:`FUNCTIONS`."""
    new = StreaqBackend(
        os.environ.get("TB_REDIS_URL", "redis://127.0.0.1:6379/0"),
        queue_name=os.environ.get("TB_QUEUE", "tests"),
        # A dead worker's task goes to another one after 2 s, so the tests of
        # redelivery are quick; live workers renew their claim every 1.8 s.
        idle_timeout=2.0,
    )
    for func in FUNCTIONS:
        new.task(func)
    new.task(timeout=1, max_tries=1)(too_slow)
    new.task(retries=2, backoff=0.1, max_backoff=0.2)(flaky)
    new.task(timeout=0.5, retries=1, backoff=0)(slow_once)
    return new


backend = make_backend()

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, backend=backend)


@app.post("/mark/{name}")
async def post_mark(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(mark, name)
    return {"mark": name}
