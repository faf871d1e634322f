from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
# A failed task skips the rest of its batch (other requests' batches go on).
app.add_middleware(BackgroundTasksMiddleware, on_error="stop")

sent: list[str] = []


def charge_card(order_id: int) -> None:
    raise ConnectionError("payment gateway unreachable")


def send_receipt(order_id: int) -> None:
    sent.append(f"receipt for order {order_id}")


@app.post("/orders/{order_id}/pay")
async def pay(order_id: int, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(charge_card, order_id)
    background_tasks.add_task(send_receipt, order_id)  # skipped if charge_card fails
    return {"status": "processing"}
