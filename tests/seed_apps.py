"""The seed's first two examples, as they are but for the import and the middleware."""

# ruff: noqa: I001, UP
import time

from fastapi import FastAPI
from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks


def basic_app():  # type: ignore[no-untyped-def]
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    def write_notification(email: str, message=""):  # type: ignore[no-untyped-def]
        with open("log.txt", mode="w") as email_file:
            content = f"notification for {email}: {message}\n"
            email_file.write(content)

    @app.post("/send-notification/{email}")
    async def send_notification(email: str, background_tasks: BackgroundTasks):  # type: ignore[no-untyped-def]
        background_tasks.add_task(write_notification, email, message="some notification")
        return {"message": "Notification sent in the background"}

    return app


def multiple_app():  # type: ignore[no-untyped-def]
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    def slow_task_1(name: str):  # type: ignore[no-untyped-def]
        time.sleep(2)  # the seed's own code, verbatim: the slow task is the example
        print(f"Task 1 completed for {name}")

    def slow_task_2(name: str):  # type: ignore[no-untyped-def]
        time.sleep(3)  # the seed's own code, verbatim: the slow task is the example
        print(f"Task 2 completed for {name}")

    def cleanup_task():  # type: ignore[no-untyped-def]
        print("Cleanup completed")

    @app.post("/process/{name}")
    async def process_data(name: str, background_tasks: BackgroundTasks):  # type: ignore[no-untyped-def]
        # Add multiple background tasks
        background_tasks.add_task(slow_task_1, name)
        background_tasks.add_task(slow_task_2, name)
        background_tasks.add_task(cleanup_task)

        return {"message": f"Processing started for {name}"}

    return app
