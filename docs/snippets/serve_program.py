import trio
from fastapi import FastAPI
from hypercorn.config import Config

from trio_background import BackgroundTasksMiddleware, serve
from trio_background.fastapi import BackgroundTasks

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)


async def warm_cache(key: str) -> None:
    await trio.sleep(1)


@app.post("/cache/{key}")
async def refresh(key: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(warm_cache, key)
    return {"refreshing": key}


async def main(bind: str = "127.0.0.1:8000") -> None:
    config = Config()
    config.bind = [bind]
    config.accesslog = "-"
    # Runs until SIGINT or SIGTERM; a second signal cuts the drain short.
    report = await serve(app, config, mode="drain", drain_timeout=20)
    # Already logged; also returned, for metrics or your own exit status.
    print(report.summary())


if __name__ == "__main__":
    trio.run(main)
