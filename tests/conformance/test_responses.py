"""Every response type completes, so its batch runs: under Hypercorn as in process.

Hypercorn delivers ``http.disconnect`` from inside the final body send, and
Starlette's streaming and file responses (ASGI spec < 2.4) then cancel the
sending task while it is still in that send: the batch must run anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from trio_background import BackgroundTasksMiddleware, from_scope
from trio_background.fastapi import BackgroundTasks

from .conftest import serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_background._asgi import Receive, Scope, Send

ran: list[str] = []


async def note(what: str) -> None:
    ran.append(what)


def make_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.get("/json")
    async def json(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(note, "json")
        return {"ok": "yes"}

    @app.get("/plain")
    async def plain(background_tasks: BackgroundTasks) -> PlainTextResponse:
        background_tasks.add_task(note, "plain")
        return PlainTextResponse("ok")

    @app.get("/streaming")
    async def streaming(background_tasks: BackgroundTasks) -> StreamingResponse:
        background_tasks.add_task(note, "streaming")

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in (b"a", b"b", b"c"):
                yield chunk

        return StreamingResponse(chunks())

    @app.get("/file")
    async def file(background_tasks: BackgroundTasks) -> FileResponse:
        background_tasks.add_task(note, "file")
        return FileResponse(Path(__file__))

    @app.api_route("/head", methods=["GET", "HEAD"])
    async def head(background_tasks: BackgroundTasks) -> StreamingResponse:
        background_tasks.add_task(note, "head")

        async def chunks() -> AsyncIterator[bytes]:
            yield b"body a HEAD request does not get"

        return StreamingResponse(chunks())

    @app.get("/no-content", status_code=204)
    async def no_content(background_tasks: BackgroundTasks) -> Response:
        background_tasks.add_task(note, "204")
        return Response(status_code=204)

    @app.get("/not-modified")
    async def not_modified(background_tasks: BackgroundTasks) -> Response:
        background_tasks.add_task(note, "304")
        return Response(status_code=304)

    @app.get("/empty")
    async def empty(background_tasks: BackgroundTasks) -> Response:
        background_tasks.add_task(note, "empty")
        return Response(b"")

    return app


async def test_every_response_type_runs_its_batch(via_h2: str) -> None:
    ran.clear()
    async with serving(make_app(), via_h2) as served:
        for path, status in [
            ("/json", 200),
            ("/plain", 200),
            ("/streaming", 200),
            ("/file", 200),
            ("/no-content", 204),
            ("/not-modified", 304),
            ("/empty", 200),
        ]:
            response = await served.http.get(path)
            assert response.status_code == status, path
        head = await served.http.head("/head")
        assert head.status_code == 200
        assert head.content == b""
        report = await served.shutdown()
    assert sorted(ran) == sorted(
        ["json", "plain", "streaming", "file", "head", "204", "304", "empty"]
    )
    assert report.count("completed") == 8
    assert report.total == 8


async def trailers_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    from_scope(scope).add_task(note, "trailers")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum")],
            "trailers": True,
        }
    )
    await send({"type": "http.response.body", "body": b"data"})
    await send(
        {
            "type": "http.response.trailers",
            "headers": [(b"x-checksum", b"1")],
            "more_trailers": False,
        }
    )


async def test_trailers_complete_the_response_in_process() -> None:
    """Trailers are an HTTP/2 extension in Hypercorn, and so in the client."""
    ran.clear()
    async with serving(trailers_app, "client", http_version="2") as served:
        response = await served.http.get("/", headers={"te": "trailers"})
        assert response.status_code == 200
        report = await served.shutdown()
    assert ran == ["trailers"]
    assert report.count("completed") == 1


async def test_trailers_refused_by_hypercorn_leave_the_task_accounted_for() -> None:
    """Hypercorn 0.18 raises on ``http.response.trailers`` (UnexpectedMessageError).

    The response is then never completed, so the batch does not run: its task
    is recorded ``skipped`` with the reason, not lost.
    """
    ran.clear()
    async with serving(trailers_app, "hypercorn") as served:
        with pytest.raises(httpx.RemoteProtocolError):
            await served.http.get("/", headers={"te": "trailers"})
        report = await served.shutdown()
    assert ran == []
    [skipped] = report.skipped
    assert skipped.reason == "the app raised UnexpectedMessageError while handling the request"


async def test_a_streamed_response_leaves_its_connection_reusable(via_h2: str) -> None:
    """The final send is not torn by Starlette's cancellation: the next request
    comes on the same connection, and shutdown is not held by it."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.get("/port")
    async def port(request: Request, background_tasks: BackgroundTasks) -> StreamingResponse:
        background_tasks.add_task(note, "port")
        client = request.scope.get("client") or ("", 0)

        async def chunks() -> AsyncIterator[bytes]:
            yield str(client[1]).encode()

        return StreamingResponse(chunks())

    ran.clear()
    async with serving(app, via_h2) as served:
        with trio.fail_after(30):  # a hang guard, not a threshold
            first = await served.http.get("/port")
            second = await served.http.get("/port")
            report = await served.shutdown()
    assert first.content == second.content
    assert ran == ["port", "port"]
    assert report.count("completed") == 2
