"""pytest plugin: ``background_client`` and ``live_server`` fixtures.

Both are trio fixtures (they open nurseries), so they need pytest-trio: set
``trio_mode = true`` or mark the test ``@pytest.mark.trio``. Both serve the
app that a fixture named ``asgi_app`` (yours) returns. Used from a test that
is not a trio test, they fail with a message that says so, instead of
pytest's generic complaint about async fixtures.

pytest loads this module at start-up in every project that has
trio-background installed, so it must import without the ``testing`` extra:
httpx is imported only when ``background_client`` is used, and its absence
fails that test with the ``pip install`` line, not the whole run.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

import pytest

from ._clock import install as _install_clock_hook
from ._live import LiveServer, open_live_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ._client import BackgroundClient

_OURS = ("background_client", "live_server")

# Under trio's MockClock, sync tasks' threads take real time in every test,
# whichever tool drives the app (the hook needs no httpx).
_install_clock_hook()


@pytest.fixture
def asgi_app() -> Any:
    """The app the fixtures serve: override it with a fixture of your own."""
    pytest.fail(
        "the background_client and live_server fixtures serve the app returned by a fixture "
        "named asgi_app: define one in your conftest.py, e.g.\n\n"
        "    @pytest.fixture\n    def asgi_app():\n        return app\n",
        pytrace=False,
    )


@pytest.fixture
async def background_client(asgi_app: Any) -> AsyncIterator[BackgroundClient]:
    """An in-process client on ``asgi_app`` (see ``open_client``)."""
    from ._client import open_client  # checked by pytest_fixture_setup

    async with open_client(asgi_app) as client:
        yield client


@pytest.fixture
async def live_server(asgi_app: Any) -> AsyncIterator[LiveServer]:
    """Real Hypercorn serving ``asgi_app`` on 127.0.0.1:0 (see ``open_live_server``)."""
    async with open_live_server(asgi_app) as server:
        yield server


def _missing_httpx() -> str | None:
    try:
        importlib.import_module("trio_background.testing._client")
    except ImportError as exc:
        return str(exc)  # it names the extra to install
    return None


def _is_trio_test(request: pytest.FixtureRequest) -> bool:
    node = request.node
    if node.get_closest_marker("trio") is not None:
        return True
    function = getattr(node, "function", None)
    return bool(request.config.getini("trio_mode")) and inspect.iscoroutinefunction(function)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    if fixturedef.argname not in _OURS or fixturedef.baseid != "":
        return  # not ours, or the user's own fixture of that name
    if fixturedef.argname == "background_client" and (missing := _missing_httpx()):
        pytest.fail(missing, pytrace=False)
    if not _is_trio_test(request):
        pytest.fail(
            f"the {fixturedef.argname} fixture runs in trio, but {request.node.name} is not a "
            "trio test: make the test 'async def' and run it with pytest-trio "
            "(trio_mode = true in the pytest config, or @pytest.mark.trio)",
            pytrace=False,
        )
