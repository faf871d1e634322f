from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from trio_background import BackgroundTasksMiddleware, from_scope

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)

audit: list[str] = []


async def note(what: str) -> None:
    audit.append(what)


async def summarise(name: str, received: list[str]) -> None:
    audit.append(f"{name} closed after {len(received)} messages")


@app.websocket("/echo")
async def echo(websocket: WebSocket, name: str) -> None:
    await websocket.accept()
    batch = from_scope(websocket.scope)
    batch.start_soon(note, f"{name} opened")  # runs now, beside this handler
    received: list[str] = []
    batch.add_task(summarise, name, received)  # runs once the connection closed
    try:
        while True:
            received.append(await websocket.receive_text())
            await websocket.send_text(received[-1])
    except WebSocketDisconnect:
        pass
