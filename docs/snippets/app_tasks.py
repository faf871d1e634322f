from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, current_supervisor

refreshes: list[float] = []


async def refresh_rates() -> None:
    while True:
        refreshes.append(trio.current_time())
        await trio.sleep(60)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Not tied to any response: an app-level task, in the supervisor's own
    # nursery, under the same shutdown deadline and report (request "app").
    current_supervisor().start_soon(refresh_rates)
    yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(BackgroundTasksMiddleware)
