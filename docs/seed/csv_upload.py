import os
import csv
from typing import List
from fastapi import FastAPI, BackgroundTasks, UploadFile, File

app = FastAPI()

def process_csv_file(filename: str, user_id: int):
    try:
        with open(filename, 'r') as file:
            csv_reader = csv.DictReader(file)
            processed_rows = 0
            
            for row in csv_reader:
                # Process each row (simulate some work)
                process_csv_row(row, user_id)
                processed_rows += 1
        
        # Clean up temporary file
        os.remove(filename)
        
        # Log completion
        print(f"Processed {processed_rows} rows for user {user_id}")
        
        # Notify user (in a real app, you might update a database or send a webhook)
        notify_user_completion(user_id, processed_rows)
        
    except Exception as e:
        print(f"Error processing CSV: {str(e)}")
        notify_user_error(user_id, str(e))

def process_csv_row(row: dict, user_id: int):
    # Simulate row processing
    print(f"Processing row for user {user_id}: {row}")

def notify_user_completion(user_id: int, row_count: int):
    # In a real application, this might send a push notification or update a database
    print(f"Notifying user {user_id}: processed {row_count} rows")

def notify_user_error(user_id: int, error_message: str):
    print(f"Notifying user {user_id} of error: {error_message}")

@app.post("/upload-csv/{user_id}")
async def upload_csv(
    user_id: int,
    background_tasks: BackgroundTasks,
    file: UploadFile = File(...)
):
    # Save uploaded file temporarily
    temp_filename = f"temp_{user_id}_{file.filename}"
    
    with open(temp_filename, "wb") as temp_file:
        content = await file.read()
        temp_file.write(content)
    
    # Process file in background
    background_tasks.add_task(process_csv_file, temp_filename, user_id)
    
    return {"message": f"File {file.filename} uploaded and will be processed in background"}
