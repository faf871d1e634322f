"""OpenTelemetry spans for background tasks (extra ``otel``).

Each task is a span named ``background <name>``, a new trace of its own
whose one link points at the span of the request that added it. Not a
child: the request's span ends when its response is complete, and its
tasks run after that, for as long as they need; a child that outlives its
parent would stretch the request's trace over work the client never waited
for. The link keeps the two findable from each other.

- The request's span is the span current where the handler calls
  ``add_task`` (or ``start_soon``): captured by the observer's ``task_added``,
  which runs in the request's own context. With
  ``opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware`` that is its
  server span, or the innermost span the handler opened.
- The task's span starts when the task starts and is current while it runs
  (so what the task traces, an HTTP call or a query, is a child of it, also
  in the worker thread of a sync task), and ends when its record is made,
  with the task's id, final state and error.
- A task that never ran (skipped, or handed off to a durable engine) gets a
  span too, of zero length, at the moment it ended: a trace then shows what
  a request asked for and did not get, and why.

Only the OpenTelemetry API is used: with no SDK configured, every span is a
no-op. Example::

    from trio_background.otel import TaskTracer

    app.add_middleware(BackgroundTasksMiddleware, observers=[TaskTracer()])
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as exc:
    raise ImportError(
        "trio_background.otel needs the OpenTelemetry API: pip install 'trio-background[otel]'"
    ) from exc

from ._observe import TaskObserver
from ._tasks import TaskState

if TYPE_CHECKING:
    from collections.abc import Generator
    from contextlib import AbstractContextManager

    from opentelemetry.trace import Span, SpanContext, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from ._records import TaskRecord
    from ._tasks import BackgroundTask

__all__ = ["TaskTracer"]

_VERSION = "0.1.0"

# A task whose span ends without an error status: it did what was asked, or
# its durable engine now owns it.
_OK_STATES = frozenset({TaskState.COMPLETED, TaskState.HANDED_OFF})


class TaskTracer(TaskObserver):
    """Makes each background task an OpenTelemetry span linked to its request.

    Pass it to the middleware (``BackgroundTasksMiddleware(app,
    observers=[TaskTracer()])``) or to a supervisor
    (``supervisor.add_observer(...)``).

    Span:
        Name ``background <task name>``, kind ``INTERNAL``, the root of a new
        trace, with a link to the request's span when there was one.
        Attributes: ``trio_background.task.id``,
        ``trio_background.task.name``, ``trio_background.task.state`` (the
        final state), ``trio_background.request`` (``"METHOD /path"``), and
        when they apply ``trio_background.task.error``,
        ``trio_background.task.reason``, ``trio_background.task.engine_id``,
        and ``trio_background.task.attempts`` (for a task that ran more than
        once: ``retries`` in its :func:`~trio_background.task` policy).
        Status ``ERROR`` (with the error or reason) for every final state
        but ``completed`` and ``handed_off``; an exception leaving the task
        is recorded as a span event.

    Args:
        tracer_provider: Where the spans go; the global provider if None.
    """

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("trio_background", _VERSION, tracer_provider)
        # Both are keyed by the task and emptied in task_ended, which the
        # supervisor calls exactly once for every task.
        self._links: dict[BackgroundTask, SpanContext] = {}
        self._spans: dict[BackgroundTask, Span] = {}

    def task_added(self, task: BackgroundTask) -> None:
        request = trace.get_current_span().get_span_context()
        if request.is_valid:
            self._links[task] = request

    def task_running(self, task: BackgroundTask) -> AbstractContextManager[None]:
        return self._running(task)

    @contextmanager
    def _running(self, task: BackgroundTask) -> Generator[None, None, None]:
        span = self._start(task)
        self._spans[task] = span
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        except Exception as exc:
            span.record_exception(exc)
            raise
        finally:
            otel_context.detach(token)

    def task_ended(self, task: BackgroundTask, record: TaskRecord) -> None:
        span = self._spans.pop(task, None)
        end_time: int | None = None
        if span is None:
            # It never ran: a span of zero length, now.
            end_time = time.time_ns()
            span = self._start(task, start_time=end_time)
        self._links.pop(task, None)
        attributes: dict[str, AttributeValue] = {
            "trio_background.task.state": record.state.value,
            "trio_background.request": record.request,
        }
        if record.error is not None:
            attributes["trio_background.task.error"] = record.error
        if record.reason is not None:
            attributes["trio_background.task.reason"] = record.reason
        if record.engine_id is not None:
            attributes["trio_background.task.engine_id"] = record.engine_id
        if record.attempts > 1:
            attributes["trio_background.task.attempts"] = record.attempts
        span.set_attributes(attributes)
        if record.state not in _OK_STATES:
            why = record.error or record.reason or record.state.value
            span.set_status(Status(StatusCode.ERROR, why))
        span.end(end_time=end_time)

    def _start(self, task: BackgroundTask, start_time: int | None = None) -> Span:
        link = self._links.get(task)
        return self._tracer.start_span(
            f"background {task.name}",
            # An empty context: no parent, whatever span is current here (an
            # outer ASGI middleware's server span still is, after it ended).
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL,
            links=() if link is None else (Link(link),),
            attributes={
                "trio_background.task.id": task.id or "",
                "trio_background.task.name": task.name,
            },
            start_time=start_time,
        )
