"""The ``streaq`` extra: the core imports none of it; without it, the error says what to install."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_the_core_imports_nothing_of_streaq_or_redis() -> None:
    code = (
        "import sys, trio_background, trio_background.fastapi, trio_background.testing\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'streaq', 'coredis', 'redis'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out == "[]\n"


def test_without_the_extra_the_import_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "streaq", None)  # as if not installed
    for name in [m for m in sys.modules if m.startswith("trio_background.streaq")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(
        ImportError,
        match=r"^trio_background\.streaq needs streaQ \(Python 3\.11\+\): "
        r"pip install 'trio-background\[streaq\]'$",
    ):
        importlib.import_module("trio_background.streaq")
