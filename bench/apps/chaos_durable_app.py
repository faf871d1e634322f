"""The durable app of ``bench/chaos.py``: each request hands one task to streaQ and adds one here.

``POST /work/{rid}``: :func:`record` of ``rid`` handed off (stored in Redis
before the response starts: 503 if it could not be), and a short in-process
task; then ``{"pid": ...}``. The web process and the streaQ workers
(``python -m trio_background.streaq worker bench.apps.chaos_durable_app:backend``)
import this module, configured by the environment:

- ``CHAOS_REDIS_URL``: where Redis is (the web process gets the suite's
  delaying proxy, the workers Redis itself);
- ``CHAOS_MARKS``: the file each run of :func:`record` appends
  ``"<rid> <pid>"`` to (one ``write`` on a file opened ``O_APPEND``: whole
  lines from any number of processes), so the checker counts the runs of
  each request's durable task.

The backend's windows are short, so that a run of the suite is: a killed
worker's task goes to another worker after ``idle_timeout`` (2 s), a task
whose release Redis never confirmed runs after ``hold`` (6 s), and a
hand-off Redis has not confirmed within ``hand_off_timeout`` (1 s) is a 503.
"""

from __future__ import annotations

import os
import random

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trio_background import BackgroundTasksMiddleware, from_scope
from trio_background.streaq import StreaqBackend

IDLE_TIMEOUT = 2.0
HOLD = 6.0
HAND_OFF_TIMEOUT = 1.0

backend = StreaqBackend(
    os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/0"),
    queue_name="chaos",
    idle_timeout=IDLE_TIMEOUT,
    hand_off_timeout=HAND_OFF_TIMEOUT,
    hold=HOLD,
)


@backend.task
async def record(rid: int) -> int:
    """Note one run of request ``rid``'s durable task in ``CHAOS_MARKS``."""
    line = f"{rid} {os.getpid()}\n".encode()
    fd = os.open(os.environ["CHAOS_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return rid


async def step(seconds: float) -> None:
    await trio.sleep(seconds)


async def work(request: Request) -> JSONResponse:
    rid = int(request.path_params["rid"])
    tasks = from_scope(request.scope)
    tasks.add_task(record, rid)
    tasks.add_task(step, random.Random(rid).uniform(0.0, 0.5))
    return JSONResponse({"pid": os.getpid()})


app = BackgroundTasksMiddleware(
    Starlette(routes=[Route("/work/{rid:int}", work, methods=["POST"])]),
    backend=backend,
    keep_records=1_000_000,
)
