"""Helpers for the examples' end-to-end tests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from aiosmtpd.controller import Controller
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request, TextMessage


class Gate:
    """Stands in for a sync task's slow step, and lets the test decide when it ends.

    Patch an example's ``simulate_work(seconds)`` with a gate: each call, made
    from the worker thread that runs the sync task (``trio.from_thread``
    reaches back into the test's trio run), records its argument, sets
    :attr:`arrived`, and blocks until the test lets it through, one call at a
    time with :meth:`step` or every call from now on with :meth:`open`.

    So a test knows the task is running and not finished (it is waiting at
    the gate) without sleeping, and the slow step takes no time at all.
    """

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.arrived = trio.Event()
        self._permits = 0
        self._opened = False
        self._changed = trio.Event()

    def __call__(self, seconds: float) -> None:
        trio.from_thread.run(self._pass, seconds)

    async def _pass(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.arrived.set()
        while not self._opened and self._permits == 0:
            await self._changed.wait()
        if not self._opened:
            self._permits -= 1

    def step(self) -> None:
        """Let one call through (now, or the next one to arrive)."""
        self._permits += 1
        self._wake()

    def open(self) -> None:
        """Let every call through, from now on."""
        self._opened = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


async def poll_progress(
    client: httpx.AsyncClient, task_id: str, until: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every record ``/task-progress/<id>`` gave, up to the first that ``until`` accepts.

    Polling the progress endpoint is the feature under test in the progress
    examples, so their tests poll it, with a short pause between polls and a
    bound on the whole.
    """
    seen: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while True:
            response = await client.get(f"/task-progress/{task_id}")
            assert response.status_code == 200
            seen.append(response.json())
            if until(seen[-1]):
                return seen
            await trio.sleep(0.01)  # the polling interval, not a synchronisation


def has_progress(count: int, record: dict[str, Any]) -> bool:
    return bool(record["progress"] == count)


async def read_until(stream: trio.abc.ReceiveStream, pattern: re.Pattern[bytes]) -> bytes:
    """Read a server's output until ``pattern`` matches; return its first group."""
    seen = b""
    while (match := pattern.search(seen)) is None:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"the server exited before printing {pattern.pattern!r}: {seen!r}")
        seen += chunk
    return match.group(1)


class _LoopbackController(Controller):
    """aiosmtpd's Controller, bound to port 0: it learns its port once bound."""

    def _trigger_server(self) -> None:
        if isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def serve_smtp(
    handler: object, **smtp_options: Any
) -> AsyncGenerator[tuple[asyncio.AbstractEventLoop, int], None]:
    """A real SMTP server (aiosmtpd) on a free port of 127.0.0.1, around ``handler``.

    aiosmtpd runs its asyncio loop in a thread of its own; yields that loop
    (to wake the handler from trio) and the port.
    """
    controller = _LoopbackController(handler, hostname="127.0.0.1", port=0, **smtp_options)
    await trio.to_thread.run_sync(controller.start)
    try:
        yield controller.loop, controller.port
    finally:
        await trio.to_thread.run_sync(controller.stop)


def use_smtp_server(monkeypatch: pytest.MonkeyPatch, port: int, *, starttls: bool = False) -> None:
    """Point the examples' ``SMTP_*`` settings at the server on ``port``."""
    for name in ("SMTP_USER", "SMTP_PASSWORD", "SMTP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(port))
    monkeypatch.setenv("SMTP_STARTTLS", "true" if starttls else "false")
    monkeypatch.setenv("SMTP_FROM", "app@example.com")


class WebSocketClient:
    """A websocket client: wsproto over a trio TCP stream (the in-process client has none)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some()
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)


async def websocket_session(
    url: str, target: str, lines: list[str], *, before_close: Callable[[], None] = lambda: None
) -> list[str]:
    """Open a websocket to ``target`` on the server at ``url``, send ``lines``
    (reading one text answer after each), call ``before_close``, then close.

    Returns:
        The answers, in order.
    """
    host, _, port = url.removeprefix("http://").partition(":")
    answers: list[str] = []
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        client = WebSocketClient(stream)
        await client.send(Request(host=f"{host}:{port}", target=target))
        accepted = await client.next_event()
        assert isinstance(accepted, AcceptConnection), accepted
        for line in lines:
            await client.send(TextMessage(data=line))
            answer = await client.next_event()
            assert isinstance(answer, TextMessage), answer
            answers.append(answer.data)
        before_close()
        await client.send(CloseConnection(code=1000))
        closed = await client.next_event()
        assert isinstance(closed, CloseConnection), closed
    return answers
