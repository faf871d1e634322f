import logging
from fastapi import FastAPI, BackgroundTasks

# Configure logging
logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)

app = FastAPI()

def safe_background_task(task_name: str, *args, **kwargs):
    """Wrapper for background tasks with error handling"""
    try:
        logger.info(f"Starting background task: {task_name}")
        
        # Determine which task to run based on task_name
        if task_name == "send_notification":
            send_notification_task(*args, **kwargs)
        elif task_name == "process_data":
            process_data_task(*args, **kwargs)
        elif task_name == "cleanup":
            cleanup_task(*args, **kwargs)
        else:
            raise ValueError(f"Unknown task: {task_name}")
        
        logger.info(f"Completed background task: {task_name}")
        
    except Exception as e:
        logger.error(f"Background task {task_name} failed: {str(e)}")
        # In a real app, you might want to retry, alert admins, etc.

def send_notification_task(user_id: int, message: str):
    if not user_id:
        raise ValueError("User ID is required")
    print(f"Notification sent to user {user_id}: {message}")

def process_data_task(data_id: int):
    if data_id <= 0:
        raise ValueError("Invalid data ID")
    print(f"Processed data {data_id}")

def cleanup_task():
    print("Cleanup completed")

@app.post("/safe-task/{user_id}")
async def create_safe_task(user_id: int, message: str, background_tasks: BackgroundTasks):
    # Use the safe wrapper for error handling
    background_tasks.add_task(safe_background_task, "send_notification", user_id, message)
    background_tasks.add_task(safe_background_task, "cleanup")
    
    return {"message": "Tasks scheduled with error handling"}
