"""Background tasks with dependency injection: FastAPI's Depends gives the task its services.

The seed's dependency-injection example on trio. FastAPI resolves the two
services for the request with ``Depends``, as in the seed; the handler
passes them to the task, which runs after the response (in a worker
thread: it is a sync function). In tests, ``app.dependency_overrides``
swaps the services, and the task gets the replacements.

What differs from the seed: the services log instead of printing, and the
dependencies are declared as ``Annotated[EmailService,
Depends(get_email_service)]``, FastAPI's recommended spelling of the seed's
``email_service: EmailService = Depends(get_email_service)``. As in FastAPI
(>= 0.118), a dependency written with ``yield`` stays open while the
request's background tasks run and is finalised after them, so a task may be
handed a resource (a database session, an open client) that such a
dependency closes.

Run it::

    python -m trio_background examples.dependency_injection:app

and from another shell::

    curl -X POST 'localhost:8000/action/7?action=login'
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

logger = logging.getLogger(__name__)

app = FastAPI(title="Background tasks with dependency injection")
app.add_middleware(BackgroundTasksMiddleware)


class EmailService:
    def send_email(self, to: str, subject: str, body: str) -> None:
        logger.info("Sending email to %s: %s", to, subject)


class DatabaseService:
    def log_activity(self, user_id: int, action: str) -> None:
        logger.info("Logging: User %d performed %s", user_id, action)


# Dependency providers
def get_email_service() -> EmailService:
    return EmailService()


def get_database_service() -> DatabaseService:
    return DatabaseService()


def notification_task(
    user_id: int, action: str, email_service: EmailService, db_service: DatabaseService
) -> None:
    # Use injected services in background task
    db_service.log_activity(user_id, action)
    email_service.send_email(
        f"user{user_id}@example.com", "Action Performed", f"You performed: {action}"
    )


@app.post("/action/{user_id}")
async def perform_action(
    user_id: int,
    action: str,
    background_tasks: BackgroundTasks,
    email_service: Annotated[EmailService, Depends(get_email_service)],
    db_service: Annotated[DatabaseService, Depends(get_database_service)],
) -> dict[str, str]:
    # Pass dependencies to background task
    background_tasks.add_task(notification_task, user_id, action, email_service, db_service)

    return {"message": f"Action {action} performed for user {user_id}"}
