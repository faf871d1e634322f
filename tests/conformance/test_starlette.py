"""Starlette's idioms, the import swapped: supervised, and skipped when the endpoint fails."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trio_background import BackgroundTask, BackgroundTasks, BackgroundTasksMiddleware, from_scope

from .conftest import serving

ran: list[str] = []


def note(what: str) -> None:
    ran.append(what)


async def refuse(request: Request) -> JSONResponse:
    from_scope(request.scope).add_task(note, "refused")
    raise HTTPException(status_code=403, detail="no")


async def one(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True}, background=BackgroundTask(note, "one"))


async def several(request: Request) -> JSONResponse:
    tasks = BackgroundTasks()
    tasks.add_task(note, "first")
    tasks.add_task(note, "second")
    return JSONResponse({"ok": True}, background=tasks)


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/refuse", refuse, methods=["POST"]),
            Route("/one", one, methods=["POST"]),
            Route("/several", several, methods=["POST"]),
        ],
        middleware=[Middleware(BackgroundTasksMiddleware)],
    )


async def test_an_endpoint_that_raises_http_exception_loses_its_tasks(via: str) -> None:
    ran.clear()
    async with serving(make_app(), via) as served:
        assert (await served.http.post("/refuse")).status_code == 403
        report = await served.shutdown()
    assert ran == []
    [skipped] = report.skipped
    assert skipped.reason == (
        "the app raised HTTPException and an exception handler sent the response"
    )


async def test_background_equals_joins_the_supervised_batch(via: str) -> None:
    ran.clear()
    async with serving(make_app(), via) as served:
        assert (await served.http.post("/one")).status_code == 200
        assert (await served.http.post("/several")).status_code == 200
        report = await served.shutdown(mode="drain", drain_timeout=5)
    # Batches of different requests run concurrently: order holds within one.
    assert sorted(ran) == ["first", "one", "second"]
    assert ran.index("first") < ran.index("second")
    by_request = sorted((r.request, r.index) for r in report.completed)
    assert by_request == [("POST /one", 0), ("POST /several", 0), ("POST /several", 1)]
