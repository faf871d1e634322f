"""Every expected failure of the ported tests quotes the porting guide's entry for it."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PORTING = HERE.parent.parent / "docs" / "guides" / "porting.rst"
PREFIX = 'docs/guides/porting.rst: "'


def guide_text() -> str:
    """The guide as one line of text, a definition's term joined to its body by ': '."""
    lines = PORTING.read_text(encoding="utf-8").splitlines()
    joined: list[str] = []
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        is_term = line and not line[0].isspace() and following.startswith("   ")
        joined.append(f"{line}:" if is_term else line)
    return re.sub(r"\s+", " ", " ".join(joined))


def xfail_reasons() -> list[tuple[str, str]]:
    reasons: list[tuple[str, str]] = []
    for path in sorted(HERE.glob("test_*.py")):
        module = importlib.import_module(f"{__package__}.{path.stem}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            for mark in getattr(function, "pytestmark", []):
                if mark.name == "xfail":
                    reasons.append((f"{path.stem}::{name}", mark.kwargs.get("reason", "")))
    return reasons


def test_there_are_expected_failures() -> None:
    assert len(xfail_reasons()) >= 5


@pytest.mark.parametrize(("test", "reason"), xfail_reasons())
def test_reason_quotes_the_guide(test: str, reason: str) -> None:
    assert reason.startswith(PREFIX), f"{test}: the reason must quote the porting guide"
    assert reason.endswith('"')
    quoted = reason[len(PREFIX) : -1]
    assert quoted in guide_text(), f"{test}: {quoted!r} is not in {PORTING.name}"
