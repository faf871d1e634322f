"""File processing in the background: a CSV upload, processed after the response.

The seed's file-processing example on trio. The handler saves the multipart
upload to a temporary file and answers; a sync task then reads the file row
by row in a worker thread, and removes it.

What real use needs, and the seed lacks:

- The temporary file is made with :mod:`tempfile` (the seed built its name
  from the client's file name, so ``../`` in it wrote outside the folder),
  and is removed whatever happens: after processing, when processing fails,
  when the upload is refused, and, at shutdown, if its task never ran or was
  cut (the lifespan sweeps what is left).
- What can be checked cheaply is checked before answering, so the client gets
  a clear 4xx: a name that does not end in ``.csv`` or content that is not
  UTF-8 text (415), an empty file or a bad header row (400), a file larger
  than ``MAX_UPLOAD_BYTES`` (413).
- A row that is malformed (bad quoting, a different number of fields than the
  header, bytes that are not UTF-8 further down) fails the task: the user is
  notified, the library logs the error with its traceback and records the
  task as ``failed``, and the server carries on.

Run it::

    python -m trio_background examples.csv_upload:app

and from another shell::

    printf 'name,amount\\nada,3\\nalan,5\\n' > data.csv
    curl -F file=@data.csv localhost:8000/upload-csv/7
"""

from __future__ import annotations

import csv
import logging
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from fastapi import FastAPI, HTTPException, UploadFile

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

logger = logging.getLogger(__name__)

UPLOAD_DIR: str | None = None
"""Where uploads wait for their task (None: the system's temporary directory)."""
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""Larger uploads are refused with 413."""

_CHUNK_BYTES = 64 * 1024

# Uploads saved and not yet processed. Sync tasks run in worker threads;
# set.add and set.discard are atomic, so they need no lock.
_unprocessed: set[Path] = set()


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    _unprocessed.discard(path)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        # Lifespan shutdown comes after every batch has ended: a file still
        # here belongs to a task that never ran, or that the deadline cut.
        for path in sorted(_unprocessed):
            _discard(path)
            logger.warning("Removed unprocessed upload %s at shutdown", path)


app = FastAPI(title="CSV upload processed in the background", lifespan=lifespan)
app.add_middleware(BackgroundTasksMiddleware)


def process_csv_file(filename: str, user_id: int) -> None:
    path = Path(filename)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            csv_reader = csv.reader(file, strict=True)
            header = next(csv_reader, None) or []
            processed_rows = 0

            for fields in csv_reader:
                if not fields:
                    continue  # a blank line, as csv.DictReader skips them
                if len(fields) != len(header):
                    raise ValueError(
                        f"line {csv_reader.line_num}: expected {len(header)} fields, "
                        f"got {len(fields)}"
                    )
                # Process each row (simulate some work)
                process_csv_row(dict(zip(header, fields, strict=True)), user_id)
                processed_rows += 1
    except Exception as e:
        notify_user_error(user_id, str(e))
        raise  # the library logs it and records the task as failed
    finally:
        _discard(path)

    logger.info("Processed %d rows for user %d", processed_rows, user_id)

    # Notify user (in a real app, you might update a database or send a webhook)
    notify_user_completion(user_id, processed_rows)


def process_csv_row(row: dict[str, str], user_id: int) -> None:
    # Simulate row processing
    logger.info("Processing row for user %d: %s", user_id, row)


def notify_user_completion(user_id: int, row_count: int) -> None:
    # In a real application, this might send a push notification or update a database
    logger.info("Notifying user %d: processed %d rows", user_id, row_count)


def notify_user_error(user_id: int, error_message: str) -> None:
    logger.info("Notifying user %d of error: %s", user_id, error_message)


async def _save_upload(file: UploadFile, user_id: int) -> Path:
    """Copy the upload to a new temporary file, chunk by chunk; return its path."""
    fd, name = tempfile.mkstemp(prefix=f"upload_{user_id}_", suffix=".csv", dir=UPLOAD_DIR)
    path = Path(name)
    _unprocessed.add(path)
    try:
        size = 0
        async with await trio.open_file(fd, "wb") as temp_file:
            while chunk := await file.read(_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise HTTPException(
                        status_code=413,
                        detail=f"the file is larger than {MAX_UPLOAD_BYTES} bytes",
                    )
                await temp_file.write(chunk)
    except BaseException:
        _discard(path)
        raise
    return path


def _check_header(path: Path) -> None:
    """Refuse, with a 4xx, a file whose first row is not a CSV header."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            header = next(csv.reader(file, strict=True), None)
    except UnicodeDecodeError as exc:
        raise HTTPException(
            status_code=415, detail="the file is not UTF-8 text: upload a CSV file"
        ) from exc
    except csv.Error as exc:
        raise HTTPException(
            status_code=400, detail=f"the header row is not valid CSV: {exc}"
        ) from exc
    if header is None:
        raise HTTPException(
            status_code=400, detail="the file is empty: its first row must name the columns"
        )
    if any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise HTTPException(
            status_code=400,
            detail="the first row must name every column, each with a different name",
        )


@app.post("/upload-csv/{user_id}")
async def upload_csv(
    user_id: int, background_tasks: BackgroundTasks, file: UploadFile
) -> dict[str, str]:
    if not (file.filename or "").lower().endswith(".csv"):
        raise HTTPException(status_code=415, detail="upload a CSV file (a name ending in .csv)")

    # Save uploaded file temporarily
    path = await _save_upload(file, user_id)
    try:
        await trio.to_thread.run_sync(_check_header, path)
    except BaseException:
        _discard(path)
        raise

    # Process file in background
    background_tasks.add_task(process_csv_file, str(path), user_id)

    return {"message": f"File {file.filename} uploaded and will be processed in background"}
