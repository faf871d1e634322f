import asyncio
import aiohttp
from fastapi import FastAPI, BackgroundTasks

app = FastAPI()

async def fetch_external_data(url: str, user_id: int):
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                data = await response.json()
                
                # Process the fetched data
                await process_external_data(data, user_id)
                
                print(f"Successfully processed external data for user {user_id}")
    except Exception as e:
        print(f"Failed to fetch external data: {str(e)}")

async def process_external_data(data: dict, user_id: int):
    # Simulate async processing
    await asyncio.sleep(1)
    print(f"Processed data for user {user_id}: {len(data)} items")

async def send_webhook(webhook_url: str, payload: dict):
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(webhook_url, json=payload) as response:
                if response.status == 200:
                    print("Webhook sent successfully")
                else:
                    print(f"Webhook failed with status {response.status}")
    except Exception as e:
        print(f"Webhook error: {str(e)}")

@app.post("/trigger-external-fetch/{user_id}")
async def trigger_external_fetch(
    user_id: int,
    data_url: str,
    webhook_url: str,
    background_tasks: BackgroundTasks
):
    # Fetch external data in background
    background_tasks.add_task(fetch_external_data, data_url, user_id)
    
    # Send webhook notification in background
    payload = {"user_id": user_id, "action": "external_fetch_triggered"}
    background_tasks.add_task(send_webhook, webhook_url, payload)
    
    return {"message": f"External data fetch triggered for user {user_id}"}
