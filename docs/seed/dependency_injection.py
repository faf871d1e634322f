from fastapi import FastAPI, BackgroundTasks, Depends

app = FastAPI()

class EmailService:
    def send_email(self, to: str, subject: str, body: str):
        print(f"Sending email to {to}: {subject}")

class DatabaseService:
    def log_activity(self, user_id: int, action: str):
        print(f"Logging: User {user_id} performed {action}")

# Dependency providers
def get_email_service() -> EmailService:
    return EmailService()

def get_database_service() -> DatabaseService:
    return DatabaseService()

def notification_task(
    user_id: int,
    action: str,
    email_service: EmailService,
    db_service: DatabaseService
):
    # Use injected services in background task
    db_service.log_activity(user_id, action)
    email_service.send_email(
        f"user{user_id}@example.com",
        "Action Performed",
        f"You performed: {action}"
    )

@app.post("/action/{user_id}")
async def perform_action(
    user_id: int,
    action: str,
    background_tasks: BackgroundTasks,
    email_service: EmailService = Depends(get_email_service),
    db_service: DatabaseService = Depends(get_database_service)
):
    # Pass dependencies to background task
    background_tasks.add_task(
        notification_task,
        user_id,
        action,
        email_service,
        db_service
    )
    
    return {"message": f"Action {action} performed for user {user_id}"}
