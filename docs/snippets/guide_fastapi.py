import trio
from fastapi import Depends, FastAPI, Request

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, drain_timeout=20, thread_limit=4)

done: list[str] = []


async def record_visit(path: str) -> None:
    done.append(f"visit {path}")


async def audit_trail(request: Request, background_tasks: BackgroundTasks) -> None:
    # Dependencies get the request's batch too; this task is added first.
    background_tasks.add_task(record_visit, request.url.path)


async def build_report(name: str) -> None:
    await trio.sleep(5)
    done.append(f"report {name}")


@app.post("/reports/{name}", dependencies=[Depends(audit_trail)])
async def create_report(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    task = background_tasks.add_task(build_report, name)
    return {"report": name, "task": task.name, "state": str(task.state)}
