"""The "Testing graceful shutdown" page's examples, run as a user would run them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets" / "testing"


def test_the_pages_test_files_pass(pytester: pytest.Pytester) -> None:
    for path in SNIPPETS.glob("*.py"):
        shutil.copy(path, pytester.path / path.name)
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\ntrio_mode = true\nfilterwarnings = ["error"]\n'
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
