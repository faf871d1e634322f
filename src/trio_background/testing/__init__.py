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
"""

from ._client import BackgroundClient as BackgroundClient
from ._client import open_client as open_client
from ._clock import install as _install_clock_hook
from ._live import LiveServer as LiveServer
from ._live import open_live_server as open_live_server

_install_clock_hook()  # idempotent: threads under MockClock take real time

__all__ = ["BackgroundClient", "LiveServer", "open_client", "open_live_server"]
