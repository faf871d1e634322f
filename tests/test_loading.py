"""Loading ``MODULE:APP`` and checking it is an ASGI app, in-process (the CLI's errors)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from trio_background._loading import LoadError, check_asgi, load_object

from . import cli_app


class AppClass:
    async def __call__(self, scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")


def failing_factory() -> Any:
    raise LookupError("no settings")


@pytest.mark.parametrize(
    ("target", "factory", "message"),
    [
        (AppClass, False, "x:y is a class, not an ASGI app: name an instance (app = AppClass()), "
            "or pass --factory to have it called"),
        (42, True, "--factory: x:y is not callable (got int); name the function that builds "
            "the app"),
        (failing_factory, True, "the factory x:y raised LookupError: no settings "
            "(traceback above)"),
        (cli_app.make_app, True, None),
        (AppClass(), False, None),
        (lambda: None, True, "what x:y() returned is not an ASGI app (got NoneType)"),
    ],
)  # fmt: skip
def test_check_asgi(target: Any, factory: bool, message: str | None) -> None:
    if message is None:
        assert callable(check_asgi(target, "x:y", factory=factory))
        return
    with pytest.raises(LoadError, match=f"^{re.escape(message)}$") as caught:
        check_asgi(target, "x:y", factory=factory)
    if "raised" in message:
        assert caught.value.user_traceback.startswith("Traceback (most recent call last):\n")
        assert 'in failing_factory\n    raise LookupError("no settings")' in (
            caught.value.user_traceback
        )


def test_load_object_a_missing_dependency_is_the_users_error(
    tmp_path: Any, monkeypatch: Any
) -> None:
    (tmp_path / "needs_dependency.py").write_text("import no_such_dependency_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        LoadError,
        match=r"^cannot import module 'needs_dependency': ModuleNotFoundError: No module named "
        r"'no_such_dependency_anywhere' \(traceback above\)$",
    ) as caught:
        load_object("needs_dependency:app")
    assert "needs_dependency.py" in caught.value.user_traceback


def test_load_object_dotted_attribute_and_what() -> None:
    assert load_object("tests.cli_app:app.router") is cli_app.app.router
    with pytest.raises(LoadError, match=r"^expected MODULE:NAME \(for example"):
        load_object("tests.cli_app", what="NAME")
