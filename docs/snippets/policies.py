import trio
from fastapi import FastAPI

import trio_background
from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)

calls: list[str] = []


class GatewayBusy(Exception):
    pass


@trio_background.task(
    timeout=10,  # seconds per attempt
    retries=3,  # up to 3 more attempts ...
    retry_on=GatewayBusy,  # ... after this exception (others fail at once)
    backoff=2,  # 2 s before the first retry, then 4, 8 ...
    max_backoff=30,  # ... never more than 30 s apart
    limit=2,  # at most 2 of these at once, across every request
    key=lambda account: f"sync:{account}",  # one per account while pending or running
)
async def sync_account(account: str) -> int:
    calls.append(f"{account} at {trio.current_time():g}")
    if len(calls) < 3:
        raise GatewayBusy("try again later")
    return 42  # rows synced


@app.post("/accounts/{account}/sync")
async def start_sync(account: str, background_tasks: BackgroundTasks) -> dict[str, str | None]:
    task = background_tasks.add_task(sync_account, account)
    return {"task": task.id}
