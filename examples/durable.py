"""Outgrowing one process: invoices go to streaQ workers through Redis and survive deploys.

The order handler adds two tasks. ``send_invoice`` is registered on the
backend, so it is stored in Redis before the response leaves, and a worker
process runs it (on this machine or another), even if the web process is
killed the moment it has answered. ``log_order`` is an ordinary task: it
runs in the web process after the response, as every task did before.

Run, from the project's root, each in its own shell::

    redis-server --port 6379
    python -m trio_background examples.durable:app
    python -m trio_background.streaq worker examples.durable:backend
    python -m trio_background.streaq worker examples.durable:backend

and::

    curl -X POST 'localhost:8000/orders/42?email=ada@example.com'
    cat outbox/invoice-42.txt

``REDIS_URL`` and ``OUTBOX`` (environment variables) say where Redis and the
outbox are.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks
from trio_background.streaq import StreaqBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
OUTBOX = Path(os.environ.get("OUTBOX", "outbox"))

logger = logging.getLogger("examples.durable")

# The web process and the workers import this module: both know the durable
# functions under the same names ("examples.durable.send_invoice").
backend = StreaqBackend(REDIS_URL, queue_name="invoices")


@backend.task
async def send_invoice(order_id: int, email: str) -> str:
    """Send the invoice: here a file in the outbox, in real life your mail or billing API.

    A durable task runs at least once: a worker that dies mid-task is
    replaced by another, which runs it again. So it is idempotent: the
    invoice of an order is one file, written whole, however many times.
    """
    await trio.Path(OUTBOX).mkdir(parents=True, exist_ok=True)
    path = trio.Path(OUTBOX / f"invoice-{order_id}.txt")
    partial = path.with_suffix(".part")
    await partial.write_text(f"invoice for order {order_id} to {email}\n")
    await partial.rename(path)
    logger.info("invoice for order %s sent to %s", order_id, email)
    return path.name


def log_order(order_id: int) -> None:
    """An ordinary background task: runs here, after the response."""
    logger.info("order %s taken", order_id)


app = FastAPI(title="Durable invoices")
app.add_middleware(BackgroundTasksMiddleware, backend=backend)


@app.post("/orders/{order_id}")
async def create_order(
    order_id: int, email: str, background_tasks: BackgroundTasks
) -> dict[str, object]:
    background_tasks.add_task(send_invoice, order_id, email)  # stored in Redis
    background_tasks.add_task(log_order, order_id)  # runs here
    return {"order": order_id, "invoice": "on its way"}
