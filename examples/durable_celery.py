"""Outgrowing one process with the Celery you already run: invoices go to Celery workers.

The same shop as ``examples/durable.py``, for a team whose workers are
Celery's. ``send_invoice`` is registered on the backend (and so on the
Celery app): it is published to the broker before the response leaves,
and a Celery worker runs it. ``log_order`` runs in the web process after
the response, as every task did before.

Run, from the project's root, each in its own shell::

    redis-server --port 6379
    python -m trio_background examples.durable_celery:app
    celery -A examples.durable_celery:celery_app worker --pool=solo

and::

    curl -X POST 'localhost:8000/orders/42?email=ada@example.com'
    cat outbox/invoice-42.txt

``REDIS_URL`` and ``OUTBOX`` (environment variables) say where the broker
and the outbox are.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from celery import Celery
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.celery import CeleryBackend
from trio_background.fastapi import BackgroundTasks

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
OUTBOX = Path(os.environ.get("OUTBOX", "outbox"))

logger = logging.getLogger("examples.durable_celery")

celery_app = Celery("invoices", broker=REDIS_URL)
celery_app.conf.task_default_queue = os.environ.get("CELERY_QUEUE", "invoices")
backend = CeleryBackend(celery_app, hand_off_timeout=5)


@backend.task
def send_invoice(order_id: int, email: str) -> str:
    """Send the invoice (a file in the outbox here); idempotent, as a retried task must be."""
    OUTBOX.mkdir(parents=True, exist_ok=True)
    path = OUTBOX / f"invoice-{order_id}.txt"
    partial = path.with_suffix(".part")
    partial.write_text(f"invoice for order {order_id} to {email}\n")
    partial.rename(path)
    logger.info("invoice for order %s sent to %s", order_id, email)
    return path.name


def log_order(order_id: int) -> None:
    """An ordinary background task: runs here, after the response."""
    logger.info("order %s taken", order_id)


app = FastAPI(title="Durable invoices on Celery")
app.add_middleware(BackgroundTasksMiddleware, backend=backend)


@app.post("/orders/{order_id}")
async def create_order(
    order_id: int, email: str, background_tasks: BackgroundTasks
) -> dict[str, object]:
    background_tasks.add_task(send_invoice, order_id, email)  # published to the broker
    background_tasks.add_task(log_order, order_id)  # runs here
    return {"order": order_id, "invoice": "on its way"}
