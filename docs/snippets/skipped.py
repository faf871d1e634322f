from fastapi import FastAPI, HTTPException

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)

sent: list[str] = []


def send_welcome(email: str) -> None:
    sent.append(email)


@app.post("/signup/{email}")
async def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(send_welcome, email)
    if not email.endswith("@example.com"):
        # The task above is skipped, as in FastAPI: no welcome for a refusal.
        raise HTTPException(status_code=403, detail="invitation only")
    return {"message": f"welcome, {email}"}
