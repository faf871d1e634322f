import trio
import trio.testing
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, ShutdownReport
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_client

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, mode="drain", drain_timeout=10)


async def send_receipt(order_id: int) -> None:
    await trio.sleep(2)  # well within the drain


async def rebuild_search_index() -> None:
    await trio.sleep(60)  # longer than the drain allows


async def notify_warehouse(order_id: int) -> None:
    await trio.sleep(1)


@app.post("/orders/{order_id}")
async def create_order(order_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(send_receipt, order_id)
    background_tasks.add_task(rebuild_search_index)
    background_tasks.add_task(notify_warehouse, order_id)
    return {"order_id": order_id}


async def main() -> ShutdownReport:
    # The in-process test client shuts down the way serve() does on SIGTERM.
    async with open_client(app) as client:
        await client.post("/orders/42")
        report = await client.shutdown()
    print(report.summary())
    print(report.to_json())
    return report


if __name__ == "__main__":
    # Virtual time: the ten seconds of drain pass at once, and the times in
    # the report are exact.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
