import time
from typing import Dict
from fastapi import FastAPI, BackgroundTasks

app = FastAPI()

# In-memory progress tracking (use Redis or database in production)
task_progress: Dict[str, dict] = {}

def long_running_task(task_id: str, items_count: int):
    task_progress[task_id] = {
        "status": "running",
        "progress": 0,
        "total": items_count,
        "message": "Starting task..."
    }
    
    try:
        for i in range(items_count):
            # Simulate work
            time.sleep(0.5)
            
            # Update progress
            task_progress[task_id].update({
                "progress": i + 1,
                "message": f"Processing item {i + 1} of {items_count}"
            })
        
        # Task completed
        task_progress[task_id].update({
            "status": "completed",
            "message": "Task completed successfully"
        })
        
    except Exception as e:
        task_progress[task_id].update({
            "status": "failed",
            "message": f"Task failed: {str(e)}"
        })

@app.post("/start-task/{task_id}")
async def start_task(task_id: str, items_count: int, background_tasks: BackgroundTasks):
    if task_id in task_progress:
        return {"error": "Task with this ID already exists"}
    
    background_tasks.add_task(long_running_task, task_id, items_count)
    
    return {
        "message": f"Task {task_id} started",
        "task_id": task_id,
        "check_progress_url": f"/task-progress/{task_id}"
    }

@app.get("/task-progress/{task_id}")
async def get_task_progress(task_id: str):
    if task_id not in task_progress:
        return {"error": "Task not found"}
    
    return task_progress[task_id]
