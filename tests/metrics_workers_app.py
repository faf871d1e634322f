"""The app of the multiprocess metrics test, served by ``hypercorn --workers 2``.

Each request adds one task and answers the pid of the worker that served it;
``/metrics`` serves what every worker wrote to ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os

from trio_background import BackgroundTasksMiddleware, from_scope
from trio_background.prometheus import TaskMetrics, metrics_app

from .conftest import Receive, Scope, Send, send_text

metrics = TaskMetrics()
served = metrics_app()


async def noop() -> None:
    pass


async def handler(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")  # the middleware answers it
    if scope["path"] == "/metrics":
        await served(scope, receive, send)
        return
    from_scope(scope).add_task(noop)
    await send_text(send, str(os.getpid()))


app = BackgroundTasksMiddleware(handler, observers=[metrics])
