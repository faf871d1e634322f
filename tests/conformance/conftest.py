"""Each conformance test runs through real servers and through the in-process client.

The ``via`` fixture gives real Hypercorn (its trio worker), real anycorn (a
Hypercorn fork on AnyIO, under trio) and the in-process client (and HTTP/2 on
both servers for the tests that take it); a test states the behaviour once and
must see the same outcome every way. When they disagree, the in-process client
is wrong until shown otherwise. A server that cannot do something a test
asks gets that param marked ``xfail(strict=True)`` with the reason, and an
entry in docs/versions.rst ("Servers the tests run through"); today there
is none.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from trio_background.testing import open_client, open_live_server

from .anycorn_server import open_anycorn_server

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from trio_background import ShutdownReport, Supervisor
    from trio_background.testing import LiveServer

    from .anycorn_server import AnycornServer


@dataclass
class Served:
    """An app being served, whichever way."""

    http: httpx.AsyncClient
    supervisor: Supervisor
    shutdown: Callable[..., Awaitable[ShutdownReport]]
    via: str


@asynccontextmanager
async def serving(app: Any, via: str, **options: Any) -> AsyncGenerator[Served, None]:
    if via == "client":
        async with open_client(app, **options) as client:
            yield Served(client, client.supervisor, client.shutdown, via)
        return
    server: LiveServer | AnycornServer
    opening = open_anycorn_server if via.startswith("anycorn") else open_live_server
    async with opening(app, **options) as server:
        http2 = via.endswith("h2")
        async with httpx.AsyncClient(base_url=server.url, http1=not http2, http2=http2) as http:
            yield Served(http, server.supervisor, server.shutdown, via)


@pytest.fixture(params=["hypercorn", "anycorn", "client"])
def via(request: pytest.FixtureRequest) -> str:
    """Real Hypercorn or anycorn (HTTP/1.1), or the in-process client."""
    return str(request.param)


@pytest.fixture(params=["hypercorn", "h2", "anycorn", "anycorn-h2", "client"])
def via_h2(request: pytest.FixtureRequest) -> str:
    """As ``via``, plus both servers over HTTP/2 (prior knowledge, cleartext)."""
    return str(request.param)
