import trio
from fastapi import FastAPI, HTTPException, Request

import trio_background
from trio_background import BackgroundTasksMiddleware, report_progress, supervisor_from_scope
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, keep_records=500)
app.mount("/admin/tasks", trio_background.monitor())  # an admin page: protect it


async def import_contacts(rows: int) -> None:
    for row in range(rows):
        report_progress(row, rows, message=f"row {row + 1} of {rows}")
        await trio.sleep(1)  # the work on one row
    report_progress(rows, rows, message="done")


def resize_photos(count: int) -> None:
    # A sync task: it runs in a worker thread, and reports the same way.
    for done in range(1, count + 1):
        ...  # the work on one photo
        report_progress(done, count)


@app.post("/imports")
async def start_import(rows: int, background_tasks: BackgroundTasks) -> dict[str, str | None]:
    task = background_tasks.add_task(import_contacts, rows)
    background_tasks.add_task(resize_photos, rows)
    return {"id": task.id}  # "<batch>.<index>", e.g. "1.0"


@app.get("/imports/{task_id}")
async def import_status(task_id: str, request: Request) -> dict[str, object]:
    record = supervisor_from_scope(request.scope).task(task_id)
    if record is None:
        raise HTTPException(404, "no such task, or its record was dropped")
    return record.to_dict()
