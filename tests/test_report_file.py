"""The ``--report-json`` file: checked before serving, replaced atomically after."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from trio_background._report_file import ReportFile, render


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old\n")
    ReportFile.check(path).write("new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["report.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_symlink_made_after_the_check_is_replaced_not_followed(tmp_path: Path) -> None:
    report_file = ReportFile.check(tmp_path / "report.json")
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "report.json").symlink_to(target)
    report_file.write("new\n")
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "report.json").is_symlink()


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=rf"^--report-json {re.escape(str(tmp_path))} is a folder: give a file"
    ):
        ReportFile.check(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /sys, never writable")
def test_an_unwritable_folder_is_found_at_once() -> None:
    with pytest.raises(
        ValueError,
        match=r"^--report-json /sys/report.json: cannot write in /sys \(Permission denied\)$",
    ):
        ReportFile.check(Path("/sys/report.json"))


def test_a_failed_write_removes_its_temporary(tmp_path: Path) -> None:
    report_file = ReportFile.check(tmp_path / "report.json")
    with pytest.raises(UnicodeEncodeError):
        report_file.write("\udcff")  # a lone surrogate: not UTF-8
    assert os.listdir(tmp_path) == []


def test_the_report_is_written_one_record_a_line_and_reads_back_the_same() -> None:
    records = [{"id": f"{n}.0", "name": 'send, "quoted"\n', "overrun": None} for n in range(3)]
    data = {"run_id": "r", "cancelled": records, "counts": {"cancelled": 3}, "failed": []}
    text = render(data)
    assert json.loads(text) == data
    lines = text.splitlines()
    assert lines[0] == "{"
    assert lines[-1] == "}"
    assert [line.strip().rstrip(",") for line in lines[2:5]] == [
        json.dumps(record, sort_keys=True) for record in records
    ]
    keys = [line.split(":", 1)[0].strip() for line in lines if line.startswith('  "')]
    assert keys == sorted(keys) == ['"cancelled"', '"counts"', '"failed"', '"run_id"']
