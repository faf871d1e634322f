"""Tools to test apps with background tasks, and their shutdown.

- :func:`open_client`: an in-process httpx client whose requests return when
  the response is complete while the batch keeps running, as under Hypercorn.
- :func:`open_live_server`: real Hypercorn on ``127.0.0.1:0``.
- A pytest plugin (loaded when the package is installed) with the fixtures
  ``background_client`` and ``live_server``, for pytest-trio tests; both
  serve the app returned by a fixture named ``asgi_app`` that you define.

Under ``trio.testing.MockClock`` (pytest-trio's ``autojump_clock``), virtual
time runs at real speed while a sync task's thread works, so a test's outcome
equals production's (see ``_clock.py``).

The client is an ``httpx.AsyncClient``, so it needs the ``testing`` extra,
which also brings pytest, pytest-trio and httpx2 (Starlette's ``TestClient``
prefers it; the live server works with either client). Without it this package still
imports (so does the pytest plugin, the clock hook is installed, and the live
server works, with any HTTP client), and ``from trio_background.testing
import open_client`` raises an ``ImportError`` that names the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._clock import install as _install_clock_hook
from ._live import LiveServer as LiveServer
from ._live import open_live_server as open_live_server

if TYPE_CHECKING:
    from ._client import BackgroundClient as BackgroundClient
    from ._client import open_client as open_client

_install_clock_hook()  # idempotent: threads under MockClock take real time

__all__ = ["BackgroundClient", "LiveServer", "open_client", "open_live_server"]

_NEED_HTTPX = ("BackgroundClient", "open_client")


def __getattr__(name: str) -> object:
    # Imported on first use so that a project without httpx can still load
    # the pytest plugin and this package; _client raises the ImportError that
    # names the extra.
    if name in _NEED_HTTPX:
        from . import _client

        return getattr(_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
