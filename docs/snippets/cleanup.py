from pathlib import Path

from fastapi import FastAPI, HTTPException

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)

SPOOL = Path("spool")
indexed: list[str] = []


def index(path: Path) -> None:
    indexed.append(path.read_text())


@app.put("/documents/{name}")
def upload(name: str, text: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    SPOOL.mkdir(exist_ok=True)
    path = SPOOL / f"{name}.txt"
    path.write_text(text)
    # Runs after the batch's other tasks, even when this handler raises.
    background_tasks.add_cleanup(path.unlink, missing_ok=True)
    background_tasks.add_task(index, path)  # skipped if the handler raises
    if not text.strip():
        raise HTTPException(422, "empty document")
    return {"stored": name}
