import hashlib

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, thread_limit=4)

events: list[str] = []


def checksum(name: str, data: bytes) -> None:
    # A sync task: runs in a worker thread, under the middleware's limiter.
    events.append(f"{name}: sha256 {hashlib.sha256(data).hexdigest()[:8]}")


async def notify_owner(name: str) -> None:
    # An async task: awaited in the request's own task.
    await trio.sleep(1)
    events.append(f"{name}: owner notified")


@app.put("/files/{name}")
async def upload(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(checksum, name, b"file contents")
    background_tasks.add_task(notify_owner, name)
    events.append(f"{name}: stored")
    return {"status": "stored"}
