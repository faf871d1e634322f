"""The app under test: a signup whose welcome email is sent after the response."""

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, drain_timeout=30)
outbox: list[str] = []


async def send_welcome_email(to: str) -> None:
    await trio.sleep(5)  # a slow SMTP server
    outbox.append(to)


@app.post("/signup/{email}")
async def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(send_welcome_email, email)
    return {"status": "welcome"}
