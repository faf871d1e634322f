"""Starlette's idioms, the import swapped: supervised; a handled exception is a normal response."""

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


async def test_a_handled_http_exception_is_a_normal_response(via: str) -> None:
    """Starlette's exception handler answers 403 and the app call returns: the
    app did not raise, so the task runs (a response sent from inside an
    ``except`` block is a normal response; nothing is guessed from it)."""
    ran.clear()
    async with serving(make_app(), via) as served:
        assert (await served.http.post("/refuse")).status_code == 403
        report = await served.shutdown()
    assert ran == ["refused"]
    assert report.count("completed") == report.total == 1


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
