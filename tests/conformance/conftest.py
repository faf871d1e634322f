"""Each conformance test runs through real Hypercorn and through the in-process client.

The ``via`` fixture gives both (and HTTP/2 for the tests that take it); a test
states the behaviour once and must see the same outcome every way. When the two
disagree, the in-process client is wrong until shown otherwise.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from trio_background.testing import open_client, open_live_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from trio_background import ShutdownReport, Supervisor


@dataclass
class Served:
    """An app being served, whichever way."""

    http: httpx.AsyncClient
    supervisor: Supervisor
    shutdown: Callable[..., Awaitable[ShutdownReport]]
    via: str


@asynccontextmanager
async def serving(app: Any, via: str, **options: Any) -> AsyncIterator[Served]:
    if via == "client":
        async with open_client(app, **options) as client:
            yield Served(client, client.supervisor, client.shutdown, via)
        return
    async with open_live_server(app, **options) as server:
        http2 = via == "h2"
        async with httpx.AsyncClient(base_url=server.url, http1=not http2, http2=http2) as http:
            yield Served(http, server.supervisor, server.shutdown, via)


@pytest.fixture(params=["hypercorn", "client"])
def via(request: pytest.FixtureRequest) -> str:
    """Real Hypercorn (HTTP/1.1) or the in-process client."""
    return str(request.param)


@pytest.fixture(params=["hypercorn", "h2", "client"])
def via_h2(request: pytest.FixtureRequest) -> str:
    """As ``via``, plus real Hypercorn over HTTP/2 (prior knowledge, cleartext)."""
    return str(request.param)
