"""The benchmark program runs and produces every row (timings are not checked).

``python -m bench.run --smoke`` starts real servers for every variant on
127.0.0.1, drives them with the Python load generator (wrk is not needed),
and exits; this test keeps that program from rotting. A benchmark measures,
a test asserts behaviour: nothing here looks at a number's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("ours", "fastapi", "starlette", "litestar", "quart_trio", "asgi_background")
SECTIONS = ("http", "dispatch", "scale", "isolation")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("bench")
    plot = out / "plot.png"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out), "--plot", str(plot)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    (json_path,) = out.glob("bench-smoke-*.json")
    return json.loads(json_path.read_text()), proc.stdout, plot


def _measured(results: dict[str, Any]) -> list[str]:
    return [v["key"] for v in results["variants"]]


def test_every_variant_is_measured_or_skipped_with_a_reason(
    smoke: tuple[dict[str, Any], str, Path],
) -> None:
    results, _, _ = smoke
    measured = _measured(results)
    assert "ours" in measured
    assert "fastapi" in measured
    for key in VARIANTS:
        assert (key in measured) != (key in results["skipped"]), key
    for reason in results["skipped"].values():
        assert "not installed" in reason


def test_machine_is_described(smoke: tuple[dict[str, Any], str, Path]) -> None:
    results, stdout, _ = smoke
    machine = results["machine"]
    assert isinstance(machine["cpu_count"], int)
    assert machine["load_generator"]
    assert f"Machine: {machine['cpu_count']} cores" in stdout


def test_http_rows(smoke: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = smoke
    rows = results["sections"]["http"]["rows"]
    expected = {
        (key, endpoint) for key in _measured(results) for endpoint in ("none", "async", "sync")
    }
    assert {(r["variant"], r["endpoint"]) for r in rows} == expected
    for row in rows:
        assert row["rps"] > 0
        assert row["samples"]
        assert row["worker"] == "trio"
    targets = {(r["endpoint"]): r for r in rows if r["variant"] == "ours"}
    assert isinstance(targets["async"]["passed"], bool)
    assert isinstance(targets["sync"]["passed"], bool)


def test_dispatch_rows(smoke: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = smoke
    rows = results["sections"]["dispatch"]["rows"]
    assert {(r["variant"], r["kind"]) for r in rows} == {
        (variant, kind)
        for variant in ("floor", "starlette", "ours", "ours_policy", "ours_limit", "ours_timeout")
        for kind in ("async", "sync")
    }
    # A task with a policy is compared with a plain one (issue 26: at most 1.2x).
    assert {r["target"] for r in rows if r["variant"].startswith("ours_")} == {"run <= 1.2x ours"}
    assert all(r["run_ns"] > 0 for r in rows)


def test_scale_rows_and_our_report(smoke: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = smoke
    sizes = results["sizes"]
    rows = results["sections"]["scale"]["rows"]
    expected = {("ours", count, "/sleep", False) for count in sizes["scale_counts"]} | {
        (key, sizes["scale_anchor_count"], "/sleep", False)
        for key in _measured(results)
        if key != "ours"
    }
    # Beside them, a FastAPI endpoint whose yield dependency stays open until its batch ends,
    # and our /sleep at the largest count served with --freeze-gc.
    expected.add(("ours", sizes["scale_anchor_count"], "/sleep-yield", False))
    expected.add(("ours", max(sizes["scale_counts"]), "/sleep", True))
    assert {(r["variant"], r["tasks"], r["path"], r["freeze_gc"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        assert row["error"] is None
        assert row["exit_s"] > 0
        if row["variant"] == "ours":
            # cancel mode: every pending task is in the report, as cancelled
            assert row["reported"] is True
            assert row["exited_by_itself"] is True
            # the report's records with an overrun are counted (how many is a measurement)
            assert isinstance(row["overruns"], int)
            assert row["target"]
        else:
            assert row["overruns"] is None


def test_scale_table_shows_the_freeze_gc_row_and_the_overrun_column(
    smoke: tuple[dict[str, Any], str, Path],
) -> None:
    _, stdout, _ = smoke
    scale = stdout[stdout.index("3. Scale and shutdown") : stdout.index("4. Isolation")]
    header = scale.splitlines()[1]
    assert "| overrun records |" in header
    (frozen,) = [line for line in scale.splitlines() if "trio-background, --freeze-gc" in line]
    assert "shutdown" in frozen  # its verdict column, as the other /sleep rows of ours


def test_isolation_rows(smoke: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = smoke
    rows = results["sections"]["isolation"]["rows"]
    assert {(r["variant"], r["state"]) for r in rows} == {
        (key, state) for key in ("ours", "fastapi") for state in ("idle", "busy")
    }


def test_tables_and_plot(smoke: tuple[dict[str, Any], str, Path]) -> None:
    results, stdout, plot = smoke
    for title in ("1. HTTP", "2. Dispatch", "3. Scale and shutdown", "4. Isolation"):
        assert title in stdout
    assert set(results["sections"]) == set(SECTIONS)
    assert results["complete"] is True
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _from_json(source: Path, plot: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bench.run --from-json SOURCE --plot PLOT``: measures nothing."""
    return subprocess.run(
        [sys.executable, "-m", "bench.run", "--from-json", str(source), "--plot", str(plot)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tables_and_plot_from_a_results_file(
    smoke: tuple[dict[str, Any], str, Path], tmp_path: Path
) -> None:
    results, stdout, _ = smoke
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    plot = tmp_path / "again.png"
    proc = _from_json(source, plot)
    assert proc.returncode == 0, proc.stderr
    table = stdout[stdout.index("Machine:") : stdout.index("bench: results in")]
    assert table.strip() in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_scale_job_is_a_missed_row_in_the_table_and_the_plot(
    smoke: tuple[dict[str, Any], str, Path], tmp_path: Path
) -> None:
    """What a run that stopped after a scale job failed leaves (partial JSON) still renders."""
    results, _, _ = smoke
    partial = {**results, "complete": False}
    scale = results["sections"]["scale"]
    failed = dict(scale["rows"][0])
    failed.update(
        error="fire 20000 x /sleep: TooSlowError: not done in 500s",
        passed=False,
        fire_s=None,
        rss_after_mb=None,
        kb_per_task=None,
        exit_s=None,
        exited_by_itself=None,
        reported=None,
        overruns=None,
    )
    partial["sections"] = {"scale": {**scale, "rows": [failed, *scale["rows"][1:]]}}
    source = tmp_path / "partial.json"
    source.write_text(json.dumps(partial))
    plot = tmp_path / "partial.png"
    proc = _from_json(source, plot)
    assert proc.returncode == 0, proc.stderr
    assert "Incomplete run" in proc.stdout
    assert "MISS: fire 20000 x /sleep: TooSlowError: not done in 500s" in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
