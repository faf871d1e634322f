from fastapi import FastAPI, BackgroundTasks
import time

app = FastAPI()

def slow_task_1(name: str):
    time.sleep(2)
    print(f"Task 1 completed for {name}")

def slow_task_2(name: str):
    time.sleep(3)
    print(f"Task 2 completed for {name}")

def cleanup_task():
    print("Cleanup completed")

@app.post("/process/{name}")
async def process_data(name: str, background_tasks: BackgroundTasks):
    # Add multiple background tasks
    background_tasks.add_task(slow_task_1, name)
    background_tasks.add_task(slow_task_2, name)
    background_tasks.add_task(cleanup_task)
    
    return {"message": f"Processing started for {name}"}
