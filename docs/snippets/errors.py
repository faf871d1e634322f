from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, TaskRecord
from trio_background.fastapi import BackgroundTasks

alerts: list[str] = []
sent: list[str] = []


async def alert(record: TaskRecord, exc: BaseException) -> None:
    # Called after the failure was logged; what this raises is logged too.
    alerts.append(f"{record.name} failed for {record.request}: {record.error}")


app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware, error_hook=alert)


def charge_card(order_id: int) -> None:
    raise ConnectionError("payment gateway unreachable")


def send_receipt(order_id: int) -> None:
    sent.append(f"receipt for order {order_id}")


@app.post("/orders/{order_id}/pay")
async def pay(order_id: int, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(charge_card, order_id)
    background_tasks.add_task(send_receipt, order_id)  # still runs
    return {"status": "processing"}
