"""examples/csv_upload.py end to end: real multipart uploads through real Hypercorn.

Every test points the example's ``UPLOAD_DIR`` at a folder of its own, and
checks that no temporary file is left in it, whatever happened.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx
import pytest
import trio

from examples import csv_upload
from trio_background.testing import open_live_server

GOOD_CSV = b"name,amount\r\nada,3\r\n\r\nalan,5\r\ngrace,8\r\n"


@pytest.fixture
def upload_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "uploads"
    directory.mkdir()
    monkeypatch.setattr(csv_upload, "UPLOAD_DIR", str(directory))
    monkeypatch.setattr(csv_upload, "_unprocessed", set[Path]())
    return directory


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def example_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "examples.csv_upload"]


async def upload(
    url: str, filename: str, content: bytes, content_type: str = "text/csv"
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.post("/upload-csv/7", files={"file": (filename, content, content_type)})


async def test_upload_is_processed_and_removed(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen_while_processing: list[list[str]] = []
    process_row = csv_upload.process_csv_row

    def watching_row(row: dict[str, str], user_id: int) -> None:
        seen_while_processing.append(leftovers(upload_dir))
        process_row(row, user_id)

    monkeypatch.setattr(csv_upload, "process_csv_row", watching_row)
    async with open_live_server(csv_upload.app) as server:
        response = await upload(server.url, "../../evil name.csv", GOOD_CSV)
        report = await server.shutdown()

    assert response.status_code == 200
    assert response.json() == {
        "message": "File ../../evil name.csv uploaded and will be processed in background"
    }
    assert report.total == 1
    assert report.count("completed") == 1
    assert report.completed[0].name == "process_csv_file"
    # One temporary file, named by tempfile, not by the client, in UPLOAD_DIR...
    assert len(seen_while_processing) == 3
    [names] = {tuple(names) for names in seen_while_processing}
    assert len(names) == 1
    assert names[0].startswith("upload_7_")
    assert names[0].endswith(".csv")
    assert "evil" not in names[0]
    # ...and gone once processed.
    assert leftovers(upload_dir) == []
    assert example_log(caplog) == [
        "Processing row for user 7: {'name': 'ada', 'amount': '3'}",
        "Processing row for user 7: {'name': 'alan', 'amount': '5'}",
        "Processing row for user 7: {'name': 'grace', 'amount': '8'}",
        "Processed 3 rows for user 7",
        "Notifying user 7: processed 3 rows",
    ]


@pytest.mark.parametrize(
    ("filename", "content", "status", "detail"),
    [
        pytest.param(
            "photo.png",
            b"\x89PNG\r\n\x1a\n",
            415,
            "upload a CSV file (a name ending in .csv)",
            id="not-a-csv-name",
        ),
        pytest.param(
            "photo.csv",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            415,
            "the file is not UTF-8 text: upload a CSV file",
            id="binary-content",
        ),
        pytest.param(
            "empty.csv",
            b"",
            400,
            "the file is empty: its first row must name the columns",
            id="empty",
        ),
        pytest.param(
            "twice.csv",
            b"name,name\nada,ada\n",
            400,
            "the first row must name every column, each with a different name",
            id="duplicate-column",
        ),
        pytest.param(
            "quotes.csv",
            b'"name"x,amount\nada,3\n',
            400,
            "the header row is not valid CSV: ',' expected after '\"'",
            id="bad-header-quoting",
        ),
    ],
)
async def test_bad_upload_is_refused_with_a_4xx(
    upload_dir: Path, filename: str, content: bytes, status: int, detail: str
) -> None:
    async with open_live_server(csv_upload.app) as server:
        response = await upload(server.url, filename, content)
        report = await server.shutdown()

    assert response.status_code == status
    assert response.json() == {"detail": detail}
    assert report.total == 0  # no task was added
    assert leftovers(upload_dir) == []


async def test_too_large_upload_is_refused(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_upload, "MAX_UPLOAD_BYTES", len(GOOD_CSV) - 1)
    async with open_live_server(csv_upload.app) as server:
        response = await upload(server.url, "data.csv", GOOD_CSV)
        report = await server.shutdown()

    assert response.status_code == 413
    assert response.json() == {"detail": f"the file is larger than {len(GOOD_CSV) - 1} bytes"}
    assert report.total == 0
    assert leftovers(upload_dir) == []


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(
            b"name,amount\nada,3\nalan,5,extra\n",
            "ValueError: line 3: expected 2 fields, got 3",
            id="extra-field",
        ),
        pytest.param(
            b'name,amount\nada,3\nalan,"5"x\n',
            "Error: ',' expected after '\"'",
            id="bad-quoting",
        ),
        pytest.param(
            # Past the header check's first read, a byte that is not UTF-8.
            b"name,amount\n" + b"ada,3\n" * 4000 + b"alan,\xff\n",
            "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff",
            id="not-utf8-further-down",
        ),
    ],
)
async def test_malformed_rows_fail_the_task_which_is_logged(
    upload_dir: Path, caplog: pytest.LogCaptureFixture, content: bytes, error: str
) -> None:
    caplog.set_level(logging.INFO)
    async with open_live_server(csv_upload.app) as server:
        response = await upload(server.url, "data.csv", content)
        report = await server.shutdown()

    assert response.status_code == 200
    assert report.total == 1
    assert report.count("failed") == 1
    [failed] = report.failed
    assert failed.name == "process_csv_file"
    assert failed.request == "POST /upload-csv/7"
    assert failed.error is not None
    assert failed.error.startswith(error)
    [logged] = [r for r in caplog.records if r.name == "trio_background" and r.exc_info]
    assert logged.levelno == logging.ERROR
    assert "process_csv_file" in logged.getMessage()
    assert example_log(caplog)[-1].startswith("Notifying user 7 of error: ")
    assert leftovers(upload_dir) == []


async def test_upload_cut_by_shutdown_is_removed(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that shutdown abandons (its thread still running) leaves no file behind."""
    caplog.set_level(logging.INFO)
    processing = trio.Event()
    release = threading.Event()
    thread_done = threading.Event()
    token = trio.lowlevel.current_trio_token()

    def stuck_row(row: dict[str, str], user_id: int) -> None:
        trio.from_thread.run_sync(processing.set, trio_token=token)
        release.wait()
        raise RuntimeError("released after the shutdown")

    def error_noted(user_id: int, error_message: str) -> None:
        thread_done.set()

    monkeypatch.setattr(csv_upload, "process_csv_row", stuck_row)
    monkeypatch.setattr(csv_upload, "notify_user_error", error_noted)
    try:
        async with open_live_server(csv_upload.app) as server:
            response = await upload(server.url, "data.csv", GOOD_CSV)
            assert response.status_code == 200
            await processing.wait()
            assert len(leftovers(upload_dir)) == 1
            report = await server.shutdown(mode="cancel")

        assert report.total == 1
        assert report.count("abandoned") == 1
        # The lifespan swept the file while the abandoned thread still held it.
        assert leftovers(upload_dir) == []
        [swept] = [m for m in example_log(caplog) if m.startswith("Removed unprocessed upload")]
        assert str(upload_dir) in swept
    finally:
        release.set()
        # Let the abandoned thread finish inside this test.
        assert await trio.to_thread.run_sync(thread_done.wait, 10)
    assert leftovers(upload_dir) == []
