"""``trio_background.health()``: 200 with counts while serving, 503 once shutdown began."""

from __future__ import annotations

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trio_background import BackgroundTasksMiddleware, Supervisor, from_scope, health
from trio_background.testing import open_client


async def nothing() -> None:
    await trio.lowlevel.checkpoint()


async def work(request: Request) -> Response:
    from_scope(request.scope).add_task(nothing)
    return Response(status_code=204)


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/healthz", health()), Route("/work", work, methods=["POST"])])


async def test_serving_then_shutting_down() -> None:
    async with open_client(starlette_app()) as client:
        assert (await client.post("/work")).status_code == 204
        await client.wait_idle()
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["status"] == "serving"
        assert body["shutting_down"] is False
        assert body["counts"]["completed"] == 1
        assert body["batches_running"] == 0
        client.supervisor.begin_shutdown(drain_timeout=10)
        response = await client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "shutting down"
        assert response.json()["shutting_down"] is True


async def test_head_and_other_methods() -> None:
    async with open_client(starlette_app()) as client:
        head = await client.head("/healthz")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        post = await client.post("/healthz")
        assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")


async def test_a_given_supervisor_without_the_middleware() -> None:
    supervisor = Supervisor()
    async with open_client(BackgroundTasksMiddleware(starlette_app())) as client:
        # health(supervisor) reports on that one, not on the request's.
        app = health(supervisor)
        async with open_client(app) as other:
            assert (await other.get("/")).status_code == 200
            supervisor.begin_shutdown(mode="cancel")
            assert (await other.get("/")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_without_middleware_or_supervisor_it_says_what_to_do() -> None:
    messages: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        raise AssertionError("not called")

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    with pytest.raises(RuntimeError, match=r"^this request has no background tasks batch: "):
        await health()({"type": "http", "method": "GET", "path": "/"}, receive, send)
    assert messages == []


async def test_lifespan_and_websocket_scopes() -> None:
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return next(incoming)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await health()({"type": "lifespan"}, receive, send)
    await health()({"type": "websocket"}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]
    assert repr(health()) == "<trio_background.health()>"
