"""The app of ``bench/chaos.py``: each request adds two tasks and says which process answered.

``POST /work/{rid}``: a short and a longer task (their lengths seeded by
``rid``), then ``{"pid": ...}``. Every record is kept (``keep_records``), so
the checker finds each task of each request in the report by its request
label, ``POST /work/{rid}``.
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


async def step(seconds: float) -> None:
    await trio.sleep(seconds)


async def work(request: Request) -> JSONResponse:
    rid = int(request.path_params["rid"])
    rng = random.Random(rid)
    tasks = from_scope(request.scope)
    tasks.add_task(step, rng.uniform(0.0, 0.3))
    tasks.add_task(step, rng.uniform(0.1, 2.0))
    return JSONResponse({"pid": os.getpid()})


app = BackgroundTasksMiddleware(
    Starlette(routes=[Route("/work/{rid:int}", work, methods=["POST"])]),
    keep_records=1_000_000,
)
