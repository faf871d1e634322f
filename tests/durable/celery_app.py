"""The Celery tests' app: Celery on the test's Redis and queue, tasks that leave marks.

Configured by the environment (``durable_env`` sets it) for the Celery
worker process (``celery -A tests.durable.celery_app:celery_app worker``);
the tests build their own with :func:`make_celery`, on the same names, so
the worker knows every task they publish.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery

from trio_background.celery import CeleryBackend


def _mark(name: str, how: str) -> str:
    with (Path(os.environ["TB_MARKS"]) / name).open("a") as file:
        file.write(f"{how} {os.getpid()}\n")
    return name


def mark(name: str) -> str:
    """Registered through the backend: leave the mark ``name``."""
    return _mark(name, "done")


def celery_mark(name: str) -> str:
    """Registered as a plain Celery task: leave the mark ``name``."""
    return _mark(name, "celery")


def flaky(name: str, failures: int) -> str:
    """Registered with ``retries=2``: fails its first ``failures`` attempts, leaving a mark each."""
    marks = Path(os.environ["TB_MARKS"]) / name
    with marks.open("a") as file:
        file.write(f"attempt {os.getpid()}\n")
    attempt = len(marks.read_text().splitlines())
    if attempt <= failures:
        raise ValueError(f"{name} fails attempt {attempt}")
    return name


def make_celery(url: str, queue: str) -> tuple[Any, CeleryBackend, Any]:
    """A Celery app on ``url`` and ``queue``, its backend, and the plain Celery task."""
    app = Celery("tests_celery", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
    )
    backend = CeleryBackend(app, hand_off_timeout=2.0)
    backend.task(name="tests.durable.celery_app.mark")(mark)
    backend.task(name="tests.durable.celery_app.flaky", retries=2, backoff=0)(flaky)
    plain = app.task(name="tests.durable.celery_app.celery_mark")(celery_mark)
    return app, backend, plain


celery_app, backend, celery_task = make_celery(
    os.environ.get("TB_REDIS_URL", "redis://127.0.0.1:1/0"), os.environ.get("TB_QUEUE", "tests")
)
