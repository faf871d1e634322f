"""Issue 15: each task is a span linked to (not a child of) its request's span.

Through real Hypercorn (``hypercorn.trio.serve`` on 127.0.0.1:0), with
OpenTelemetry's own ASGI middleware inside ours and outside it, and the
SDK's in-memory exporter.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import trio_background
from trio_background import BackgroundTasks, BackgroundTasksMiddleware, Supervisor, from_scope
from trio_background.otel import TaskTracer
from trio_background.testing import open_client, open_live_server

from .conftest import Receive, Scope, Send, send_text
from .test_hypercorn import hypercorn_on_loopback


class Traced:
    """An app whose request adds four tasks; the first waits for the test."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("test")
        self.started = trio.Event()
        self.gate = trio.Event()

    async def work(self) -> None:
        with self.tracer.start_as_current_span("query"):
            self.started.set()
            await self.gate.wait()

    def resize(self) -> None:
        with self.tracer.start_as_current_span("thumbnail"):
            pass

    async def boom(self) -> None:
        raise ValueError("nope")

    async def never(self) -> None:
        raise AssertionError("on_error='stop' skips it")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # the middleware answers it
        batch = from_scope(scope)
        for task in (self.work, self.resize, self.boom, self.never):
            batch.add_task(task)
        await send_text(send, "accepted")


def compose(order: str, traced: Traced, provider: TracerProvider) -> Any:
    observers = [TaskTracer(tracer_provider=provider)]
    if order == "otel inside ours":
        inner = OpenTelemetryMiddleware(traced, tracer_provider=provider)
        return BackgroundTasksMiddleware(inner, on_error="stop", observers=observers)
    ours = BackgroundTasksMiddleware(traced, on_error="stop", observers=observers)
    return OpenTelemetryMiddleware(ours, tracer_provider=provider)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    """Ours and the tasks' spans (not the ASGI middleware's send and receive spans)."""
    ours = [s for s in spans if s.name.startswith("background ") or s.kind is SpanKind.INTERNAL]
    ours = [s for s in ours if not s.name.startswith("GET ")]
    named = {span.name: span for span in ours}
    assert len(named) == len(ours)
    return named


@pytest.mark.parametrize("order", ["otel inside ours", "otel outside ours"])
async def test_task_spans_are_linked_to_the_request_span_which_ends_with_the_response(
    order: str,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = Traced(provider)
    async with hypercorn_on_loopback(compose(order, traced, provider)) as url:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}/reports")
        assert response.text == "accepted"
        await traced.started.wait()
        # The first task runs and waits: the request's span has ended already,
        # and no task's span has.
        [request] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert not [s for s in exporter.get_finished_spans() if s.name.startswith("background")]
        traced.gate.set()
    spans = by_name(exporter.get_finished_spans())
    work = spans["background Traced.work"]
    resize = spans["background Traced.resize"]
    boom = spans["background Traced.boom"]
    never = spans["background Traced.never"]
    assert request.end_time is not None
    for span in (work, resize, boom, never):
        # A root of its own trace, linked to the request's span.
        assert span.parent is None
        assert span.kind is SpanKind.INTERNAL
        assert span.context.trace_id != request.context.trace_id
        [link] = span.links
        assert link.context.span_id == request.context.span_id
        assert link.context.trace_id == request.context.trace_id
        assert span.start_time is not None
        assert span.start_time >= request.end_time
        assert span.attributes is not None
        assert span.attributes["trio_background.request"] == "GET /reports"
    assert [s.attributes and s.attributes["trio_background.task.id"] for s in (work, never)] == [
        "1.0",
        "1.3",
    ]
    # What a task traces is a child of its span, in a sync task's thread too.
    assert spans["query"].parent is not None
    assert spans["query"].parent.span_id == work.context.span_id
    assert spans["thumbnail"].parent is not None
    assert spans["thumbnail"].parent.span_id == resize.context.span_id
    assert work.attributes is not None
    assert work.attributes["trio_background.task.state"] == "completed"
    assert work.status.status_code is StatusCode.UNSET
    assert boom.attributes is not None
    assert boom.attributes["trio_background.task.state"] == "failed"
    assert boom.attributes["trio_background.task.error"] == "ValueError: nope"
    assert boom.status.status_code is StatusCode.ERROR
    assert boom.status.description == "ValueError: nope"
    assert [event.name for event in boom.events] == ["exception"]
    # The task that never ran still shows, with no length, and why.
    assert never.attributes is not None
    assert never.attributes["trio_background.task.state"] == "skipped"
    assert str(never.attributes["trio_background.task.reason"]).startswith("task 1.2 (")
    assert never.start_time == never.end_time
    assert never.status.status_code is StatusCode.ERROR


async def test_without_a_request_span_or_an_sdk_tasks_just_run() -> None:
    ran: list[str] = []

    async def task() -> None:
        ran.append("ran")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        from_scope(scope).add_task(task)
        await send_text(send, "ok")

    # No tracer provider configured: the API's no-op spans.
    async with open_client(BackgroundTasksMiddleware(app, observers=[TaskTracer()])) as client:
        await client.get("/")
        await client.wait_idle()
    assert ran == ["ran"]


async def test_a_batch_run_outside_a_request_has_unlinked_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    supervisor = Supervisor()
    supervisor.add_observer(TaskTracer(tracer_provider=provider))
    batch = BackgroundTasks()
    batch.add_task(trio.sleep, 0)
    await supervisor.run(batch)
    [span] = exporter.get_finished_spans()
    assert span.name == "background sleep"
    assert span.links == ()
    assert span.parent is None


# Issue 26: a retried task's span says how many attempts it took.


async def test_a_retried_task_says_its_attempts(autojump_clock: trio.testing.MockClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    calls: list[int] = []

    @trio_background.task(retries=2, backoff=1, retry_on=ConnectionError)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")

    @trio_background.task(timeout=2)
    async def slow() -> None:
        await trio.sleep(60)

    async def plain() -> None:
        pass

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        batch = from_scope(scope)
        for func in (flaky, slow, plain):
            batch.add_task(func)
        await send_text(send, "ok")

    traced = BackgroundTasksMiddleware(app, observers=[TaskTracer(tracer_provider=provider)])
    async with open_live_server(traced) as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/")
        await server.supervisor.wait_idle()
    attributes = {
        span.name.rsplit(".", 1)[-1]: dict(span.attributes or {})
        for span in exporter.get_finished_spans()
    }
    assert attributes["flaky"]["trio_background.task.attempts"] == 3
    assert attributes["flaky"]["trio_background.task.state"] == "completed"
    assert attributes["slow"]["trio_background.task.error"] == "TimeoutError: timed out after 2 s"
    # One attempt each: no attribute.
    assert "trio_background.task.attempts" not in attributes["slow"]
    assert "trio_background.task.attempts" not in attributes["plain"]
