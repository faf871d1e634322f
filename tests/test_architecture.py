"""The house keeps its shape: one task's path crosses few modules, none backwards.

``scripts/trace-task`` follows one async task from ``add_task`` to the report's
log line (docs/architecture.rst prints its output); a change that makes a
module call back up the flow, or scatters a task's life again, fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_one_task_crosses_at_most_eight_modules_and_never_backwards() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "trace-task")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    match = re.fullmatch(r"(\d+) module crossings, (\d+) backwards\n", result.stdout)
    assert match is not None, result.stdout
    crossings, backwards = int(match[1]), int(match[2])
    assert crossings <= 8
    assert backwards == 0


def test_the_architecture_page_shows_what_the_script_prints() -> None:
    verbose = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "trace-task"), "--verbose"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    page = (ROOT / "docs" / "architecture.rst").read_text()
    shown = "\n".join("    " + line for line in verbose.splitlines())
    assert shown in page
