from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks
from trio_background.prometheus import TaskMetrics

metrics = TaskMetrics()  # on prometheus_client.REGISTRY

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, observers=[metrics])
# The page at /metrics itself (a mount would redirect /metrics to /metrics/).
# Internal: protect it as the monitor.
app.add_route("/metrics", metrics.app(), include_in_schema=False)


def write_log(message: str) -> None:
    with open("log.txt", "a") as log:
        log.write(message + "\n")


@app.post("/send-notification/{email}")
async def send_notification(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(write_log, f"notification for {email}")
    return {"message": "Notification sent in the background"}
