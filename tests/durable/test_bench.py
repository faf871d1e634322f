"""``python -m bench.durable --smoke`` runs and prints every row (timings are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    pytest.skip("streaQ (the durable backend) needs Python 3.11+", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.usefixtures("redis_server")  # skips, with the reason, without redis-server
def test_the_durable_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "durable.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.durable", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = (
        "durable: one task handed off",
        "in process: one async task",
        "hand_off() alone",
        "celery: one task published",
    )
    for row in rows:
        assert row in done.stdout
    data = json.loads(out.read_text())
    assert {k: len(v) for k, v in data["seconds"].items()} == {
        "durable: one task handed off": 20,
        "in process: one async task": 20,
        "hand_off() alone, one task": 20,
        "celery: one task published": 20,
    }
