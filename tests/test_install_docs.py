"""Issue 25: what the README and docs tell a new user to type is what the project supports.

The install commands, the command-line table and the sample log lines are
checked against pyproject.toml, the Makefile, the parser and the code that
writes the lines. (``make dist`` runs the install of the wheel with the
``testing`` extra for real: scripts/check-testing-extra.)
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trio_background import ShutdownReport, TaskRecord, TaskState
from trio_background._cli import _HYPERCORN, _parser  # pyright: ignore[reportPrivateUsage]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.rst"))]


def console_lines(prefix: str) -> list[tuple[str, str]]:
    """Every ``$ prefix ...`` command line in the README and the docs: (page, line)."""
    return [
        (page.name, line.strip())
        for page in PAGES
        for line in page.read_text().splitlines()
        if line.strip().startswith(f"$ {prefix}")
    ]


def test_index_installs_are_marked_for_later() -> None:
    """``pip install trio-background`` fails until the package is published."""
    from_index = [
        (page, line) for page, line in console_lines("pip install") if "trio-background" in line
    ]
    assert from_index  # the later command is given
    assert [(p, line) for p, line in from_index if "once published" not in line] == []


def test_install_commands_name_real_extras_and_the_wheel_make_dist_builds() -> None:
    wheel = f"dist/trio_background-{VERSION}-py3-none-any.whl"
    commands = [line for _, line in console_lines("pip install")]
    commands += [line for _, line in console_lines("make dist && pip install")]
    extras_named: set[str] = set()
    wheels_named: set[str] = set()
    for command in commands:
        for target, extras in re.findall(r'"([^"\[]*)\[([a-z,]+)\]"', command):
            extras_named.update(extras.split(","))
            if target.endswith(".whl"):
                wheels_named.add(target)
    assert extras_named <= EXTRAS
    assert {"fastapi", "testing"} <= extras_named
    assert wheels_named == {wheel}
    # The clone commands: pip install . and its editable form.
    assert any(re.search(r'pip install "\.\[', c) for c in commands)
    assert any(re.search(r'pip install -e "\.\[', c) for c in commands)
    # make dist builds into dist/ with python -m build, which names the
    # wheel after the project and its version.
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "--dry-run", "--always-make", "dist"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "-m build --outdir dist ." in dry_run
    assert "scripts/check-testing-extra dist" in dry_run
    assert PYPROJECT["project"]["name"] == "trio-background"


def test_the_changelog_claims_no_release() -> None:
    text = (DOCS / "changelog.rst").read_text()
    assert "First release." not in text
    # No heading "0.1.0 (date)": a version heading only once it is published.
    assert re.findall(r"^\d+\.\d+\.\d+ \(.*\)$", text, flags=re.MULTILINE) == []


def test_the_command_line_table_lists_every_option() -> None:
    hypercorns = {flag for flags, _, _ in _HYPERCORN for flag in flags} | {"--config"}
    ours = {
        option
        for action in _parser()._actions  # pyright: ignore[reportPrivateUsage]
        for option in action.option_strings
        if option.startswith("--")
        and option not in hypercorns
        and option != "--help"
        # --port and --host are hidden: they fail with a hint.
        and action.help != argparse.SUPPRESS
    }
    assert {"--access-log", "--version", "--reload", "--mode"} <= ours
    text = (DOCS / "shutdown.rst").read_text()
    table = text[text.index("The command line\n") : text.index("The exit status is")]
    documented = set(re.findall(r"^   \* - ``(--[a-z-]+)", table, flags=re.MULTILINE))
    assert documented - {"--bind", "--workers"} == ours
    assert "--access-log [TARGET]" in table


@pytest.mark.skipif(sys.version_info < (3, 11), reason="streaQ needs Python 3.11")
def test_the_sample_worker_line_is_the_real_one(caplog: pytest.LogCaptureFixture) -> None:
    from trio_background.streaq._worker import log_report

    text = (DOCS / "durable.rst").read_text()
    [sample] = re.findall(r"^ +\S+ \S+ WARNING trio_background\.streaq: (.*)$", text, re.M)
    cancelled = TaskRecord(
        name="examples.durable.send_invoice",
        state=TaskState.CANCELLED,
        error=None,
        reason="cancelled while running",
        request="streaq",
        batch=120,
        index=0,
        started_at=1.0,
        ended_at=31.0,
        engine_id="6c0f3e8a9d2b4c71a05e93f1d7b2c846",
    )
    counts = {state.value: 0 for state in TaskState if state.is_final}
    counts.update(completed=119, cancelled=1)
    report = ShutdownReport(
        mode="drain", cause="signal", drain_timeout=30, counts=counts, cancelled=(cancelled,)
    )
    with caplog.at_level(logging.INFO, logger="trio_background"):
        log_report(report, "3f2a9c1d")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("trio_background.streaq", "WARNING", sample)
    ]
