import trio
from fastapi import FastAPI, HTTPException, Request

from trio_background import BackgroundTask, BackgroundTasksMiddleware, supervisor_from_scope
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)

published: list[str] = []


async def render(report: str) -> str:
    await trio.sleep(5)
    return f"{report}.pdf"


async def publish(rendering: BackgroundTask) -> None:
    await rendering.wait()  # returns once it ended; never raises what it raised
    if rendering.state == "completed":
        published.append(str(rendering.result))


@app.post("/reports/{report}")
async def create(report: str, background_tasks: BackgroundTasks) -> dict[str, str | None]:
    rendering = background_tasks.start_soon(render, report)  # a handle
    background_tasks.add_task(publish, rendering)
    return {"task": rendering.id}


@app.delete("/tasks/{task_id}")
async def cancel(task_id: str, request: Request) -> dict[str, bool]:
    if not supervisor_from_scope(request.scope).cancel(task_id):
        raise HTTPException(404, "no such task, or it has ended")
    return {"cancelled": True}
