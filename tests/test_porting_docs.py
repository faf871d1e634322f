"""The porting guide's ported app and its own test suite, run as the app's team would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets" / "porting_suite"


def copy_suite(pytester: pytest.Pytester) -> Path:
    for path in SNIPPETS.glob("*.py"):
        shutil.copy(path, pytester.path / path.name)
    # An app's own config: no trio_mode, warnings as errors.
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nfilterwarnings = ["error"]\n')
    return pytester.path / "test_recipes.py"


def test_the_ported_suite_passes_on_trio(pytester: pytest.Pytester) -> None:
    copy_suite(pytester)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_left_on_asyncio_the_suite_fails_naming_the_fix(pytester: pytest.Pytester) -> None:
    suite = copy_suite(pytester)
    text = suite.read_text()
    for ours, theirs in [
        ('TestClient(app, backend="trio")', "TestClient(app)"),
        ('return "trio"', 'return "asyncio"'),
    ]:
        assert ours in text
        text = text.replace(ours, theirs)
    suite.write_text(text)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    fix = (
        'in tests, run the test client on trio: TestClient(app, backend="trio"), or an '
        'anyio_backend fixture that returns "trio"'
    )
    errors = [line for line in result.stdout.lines if line.startswith("E ") and fix in line]
    assert len(errors) == 2, result.stdout.str()
