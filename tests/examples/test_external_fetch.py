"""examples/external_fetch.py end to end: the data source and the webhook receiver are
real HTTP servers (a small FastAPI app on real Hypercorn, on 127.0.0.1:0) in the
same trio run as the example's server.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from examples import external_fetch
from trio_background.testing import open_live_server

if TYPE_CHECKING:
    from collections.abc import Iterator

PAYLOAD = {"user_id": 7, "action": "external_fetch_triggered"}


class Remote:
    """A data source and a webhook receiver, as one small FastAPI app.

    ``GET /data`` answers three JSON items; with :meth:`hold`, it waits for
    :meth:`release` first. ``GET /text`` answers plain text, ``GET /broken``
    a 500. ``POST /hook`` keeps the JSON it receives and answers
    ``hook_status``.
    """

    def __init__(self) -> None:
        self.fetches = 0
        self.fetch_started = trio.Event()
        self.hooks: list[Any] = []
        self.hook_status = 200
        self._held: trio.Event | None = None
        self.app = FastAPI()
        self.app.get("/data")(self.data)
        self.app.get("/text")(self.text)
        self.app.get("/broken")(self.broken)
        self.app.post("/hook")(self.hook)

    def hold(self) -> None:
        self._held = trio.Event()

    def release(self) -> None:
        if self._held is not None:
            self._held.set()

    async def data(self) -> list[dict[str, int]]:
        self.fetches += 1
        self.fetch_started.set()
        if self._held is not None:
            await self._held.wait()
        return [{"id": 1}, {"id": 2}, {"id": 3}]

    async def text(self) -> PlainTextResponse:
        return PlainTextResponse("hello, this is not JSON")

    async def broken(self) -> Response:
        return Response("database on fire", status_code=500)

    async def hook(self, request: Request) -> Response:
        self.hooks.append(await request.json())
        return Response(status_code=self.hook_status)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(autouse=True)
def fast_processing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(external_fetch, "PROCESS_SECONDS", 0.0)


def example_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "examples.external_fetch"
    ]


async def trigger(url: str, data_url: str, webhook_url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.post(
            "/trigger-external-fetch/7", params={"data_url": data_url, "webhook_url": webhook_url}
        )


async def test_fetch_then_webhook_after_the_response(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    remote = Remote()
    remote.hold()
    async with (
        open_live_server(remote.app) as source,
        open_live_server(external_fetch.app) as server,
    ):
        response = await trigger(server.url, f"{source.url}/data", f"{source.url}/hook")
        assert response.status_code == 200
        assert response.json() == {"message": "External data fetch triggered for user 7"}

        # The client has its answer while the fetch is still waiting for data,
        # and the webhook, the next task, has not been sent.
        await remote.fetch_started.wait()
        assert remote.hooks == []
        assert server.supervisor.statistics().batches_running == 1

        remote.release()
        report = await server.shutdown()

    assert report.total == 2
    assert report.count("completed") == 2
    assert [r.name for r in report.completed] == ["fetch_external_data", "send_webhook"]
    assert remote.fetches == 1
    assert remote.hooks == [PAYLOAD]
    assert example_log(caplog) == [
        (logging.INFO, "Processed data for user 7: 3 items"),
        (logging.INFO, "Successfully processed external data for user 7"),
        (logging.INFO, "Webhook sent successfully"),
    ]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param(
            "/text",
            "the answer is not JSON (content-type text/plain; charset=utf-8): JSONDecodeError: ",
            id="not-json",
        ),
        pytest.param("/broken", "it answered HTTP 500", id="500"),
        pytest.param(None, "ConnectError: ", id="unreachable"),
    ],
)
async def test_a_failed_fetch_is_logged_and_the_webhook_still_sent(
    caplog: pytest.LogCaptureFixture, closed_port: int, path: str | None, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    remote = Remote()
    async with (
        open_live_server(remote.app) as source,
        open_live_server(external_fetch.app) as server,
    ):
        data_url = f"http://127.0.0.1:{closed_port}/data" if path is None else f"{source.url}{path}"
        response = await trigger(server.url, data_url, f"{source.url}/hook")
        report = await server.shutdown()

    assert response.status_code == 200
    # Handled by the task: logged, and the server and the next task carry on.
    assert report.count("completed") == report.total == 2
    assert remote.hooks == [PAYLOAD]
    [(level, message), webhook] = example_log(caplog)
    assert level == logging.WARNING
    assert message.startswith(f"Failed to fetch external data from {data_url}: {reason}")
    assert webhook == (logging.INFO, "Webhook sent successfully")


async def test_a_failed_webhook_is_logged(
    caplog: pytest.LogCaptureFixture, closed_port: int
) -> None:
    caplog.set_level(logging.INFO)
    remote = Remote()
    remote.hook_status = 503
    async with (
        open_live_server(remote.app) as source,
        open_live_server(external_fetch.app) as server,
    ):
        failing = await trigger(server.url, f"{source.url}/data", f"{source.url}/hook")
        unreachable_url = f"http://127.0.0.1:{closed_port}/hook"
        unreachable = await trigger(server.url, f"{source.url}/data", unreachable_url)
        report = await server.shutdown()

    assert failing.status_code == unreachable.status_code == 200
    assert report.count("completed") == report.total == 4
    assert remote.hooks == [PAYLOAD]
    warnings = [m for level, m in example_log(caplog) if level == logging.WARNING]
    assert len(warnings) == 2
    assert "Webhook failed with status 503" in warnings
    [error] = [m for m in warnings if m.startswith("Webhook error")]
    assert error.startswith(f"Webhook error for {unreachable_url}: ConnectError: ")


@pytest.mark.parametrize("field", ["data_url", "webhook_url"])
async def test_only_http_urls_are_accepted(field: str) -> None:
    params = {"data_url": "http://example.com/data", "webhook_url": "http://example.com/hook"}
    params[field] = "file:///etc/passwd"
    async with open_live_server(external_fetch.app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/trigger-external-fetch/7", params=params)
        report = await server.shutdown()

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]
    assert report.total == 0
