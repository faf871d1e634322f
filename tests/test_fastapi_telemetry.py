"""A port keeps FastAPI's telemetry: the same ``fastapi.background_task`` spans.

FastAPI (>= 0.142, telemetry on) wraps each of its own background tasks in a
span ``fastapi.background_task``, a child of the request's span, with
``code.function.name`` and an error status when the task raises. The same
app with this library's ``BackgroundTasks`` gives the same spans (name,
attributes, parent, status), plus the task's id and final state, through
real Hypercorn, with no observer to configure.
"""

from __future__ import annotations

from typing import Any

import fastapi
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trio_background import BackgroundTasksMiddleware
from trio_background import fastapi as ours
from trio_background.testing import open_live_server

pytestmark = pytest.mark.skipif(
    not hasattr(fastapi, "telemetry"), reason="FastAPI < 0.142 has no built-in telemetry"
)


def write_log(line: str) -> None:
    pass


async def fail_loudly() -> None:
    raise ValueError("the task failed")


def make_app(provider: TracerProvider, *, port: bool) -> FastAPI:
    app = FastAPI(telemetry={"tracer_provider": provider})
    if port:  # the two edits of the porting guide
        app.add_middleware(BackgroundTasksMiddleware)

        @app.post("/signup")
        async def signup_ported(background_tasks: ours.BackgroundTasks) -> dict[str, str]:
            background_tasks.add_task(write_log, "signed up")
            background_tasks.add_task(fail_loudly)
            return {"status": "ok"}

    else:

        @app.post("/signup")
        async def signup(background_tasks: fastapi.BackgroundTasks) -> dict[str, str]:
            background_tasks.add_task(write_log, "signed up")
            background_tasks.add_task(fail_loudly)
            return {"status": "ok"}

    return app


def shape(spans: tuple[ReadableSpan, ...]) -> list[tuple[Any, ...]]:
    by_id = {span.context.span_id: span for span in spans}
    rows = []
    for span in spans:
        if span.name != "fastapi.background_task":
            continue
        parent = by_id.get(span.parent.span_id) if span.parent is not None else None
        fastapi_attributes = {
            k: v for k, v in (span.attributes or {}).items() if not k.startswith("trio_background")
        }
        rows.append(
            (
                span.name,
                sorted(fastapi_attributes.items()),
                None if parent is None else parent.name,
                span.status.status_code.name,
            )
        )
    return sorted(rows)


async def spans_of(*, port: bool) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with open_live_server(make_app(provider, port=port)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/signup")).status_code == 200
        await server.shutdown()
    return exporter.get_finished_spans()


async def test_the_spans_of_a_port_are_fastapis_own() -> None:
    theirs = await spans_of(port=False)
    mine = await spans_of(port=True)
    assert shape(mine) == shape(theirs)
    assert [row[3] for row in shape(theirs)] == ["ERROR", "UNSET"]  # fail_loudly, write_log
    extras = sorted(
        (span.attributes or {}).get("trio_background.task.state", "")
        for span in mine
        if span.name == "fastapi.background_task"
    )
    assert extras == ["completed", "failed"]
    ids = {
        (span.attributes or {}).get("trio_background.task.id")
        for span in mine
        if span.name == "fastapi.background_task"
    }
    assert ids == {"1.0", "1.1"}
