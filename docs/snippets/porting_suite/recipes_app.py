"""An app ported from FastAPI with the guide's two edits (marked)."""

from fastapi import FastAPI
from pydantic import BaseModel

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks  # edit 1: was `from fastapi import ...`

app = FastAPI()
app.add_middleware(BackgroundTasksMiddleware)  # edit 2

outbox: list[str] = []


class Recipe(BaseModel):
    name: str
    author: str


def notify_followers(author: str, recipe: str) -> None:
    outbox.append(f"{author} posted {recipe}")


@app.post("/recipes", status_code=201)
async def create_recipe(recipe: Recipe, background_tasks: BackgroundTasks) -> Recipe:
    background_tasks.add_task(notify_followers, recipe.author, recipe.name)
    return recipe
