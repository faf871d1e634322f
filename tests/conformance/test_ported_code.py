"""Code written for FastAPI's ``BackgroundTasks`` keeps working after the import swap.

Each pattern comes from a real app ported with the porting guide's two
edits: an event bus that runs a notification inline when it has no batch
(``if self.bg:``), ``bg or BackgroundTasks()``, ``isinstance`` checks, and
fastapi-utils' class-based views. Each runs with FastAPI's own class and
with ours in the same app, and must do the same thing, through real servers
and the in-process client; ours also puts the tasks in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fastapi
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi_utils.cbv import cbv

import trio_background
from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks, get_background_tasks

from .conftest import serving

if TYPE_CHECKING:
    from collections.abc import Callable

    Handler = Callable[..., Any]

# The two classes a handler may be typed with: FastAPI's, and ours after the swap.
KINDS: dict[str, Any] = {"fastapi": fastapi.BackgroundTasks, "ours": BackgroundTasks}

events: list[str] = []


def notify(event: str) -> None:
    events.append(f"notify {event}")


class EventBus:
    """As Mealie's: a notification goes to the batch when there is one, else runs now."""

    def __init__(self, bg: Any) -> None:
        self.bg = bg

    def dispatch(self, event: str) -> None:
        if self.bg:
            self.bg.add_task(notify, event)
        else:
            notify(event)


def batch_typed(tasks_type: Any) -> Callable[[Handler], Handler]:
    """Type a handler's ``background_tasks`` with one class or the other (FastAPI reads it)."""

    def annotate(handler: Handler) -> Handler:
        handler.__annotations__["background_tasks"] = tasks_type
        return handler

    return annotate


def make_app(kind: str) -> FastAPI:
    tasks_type = KINDS[kind]
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.post("/recipes")
    @batch_typed(tasks_type)
    async def create_recipe(background_tasks: Any) -> dict[str, str]:
        EventBus(background_tasks).dispatch("created")
        events.append("response created")
        return {"created": "soup"}

    @app.post("/or")
    @batch_typed(tasks_type)
    async def or_new(background_tasks: Any) -> dict[str, str]:
        (background_tasks or tasks_type()).add_task(notify, "or")
        events.append("response or")
        return {}

    @app.get("/check")
    @batch_typed(tasks_type)
    async def check(background_tasks: Any) -> dict[str, bool]:
        return {
            "isinstance": isinstance(background_tasks, tasks_type),
            "issubclass": issubclass(type(background_tasks), tasks_type),
            "other": isinstance(object(), tasks_type),
        }

    return app


@pytest.mark.parametrize("kind", ["fastapi", "ours"])
async def test_an_empty_batch_is_true_so_work_still_goes_to_it(via: str, kind: str) -> None:
    events.clear()
    async with serving(make_app(kind), via) as served:
        assert (await served.http.post("/recipes")).json() == {"created": "soup"}
        assert (await served.http.post("/or")).status_code == 200
        report = await served.shutdown()
    # After the response, not inline in the handler (201 in 5 s, in Mealie).
    assert sorted(events) == ["notify created", "notify or", "response created", "response or"]
    for event in ("created", "or"):
        assert events.index(f"notify {event}") > events.index(f"response {event}")
    if kind == "ours":
        assert [(r.name, r.state.value) for r in report.completed] == [
            ("notify", "completed"),
            ("notify", "completed"),
        ]


@pytest.mark.parametrize("kind", ["fastapi", "ours"])
async def test_isinstance_takes_the_batch(via: str, kind: str) -> None:
    async with serving(make_app(kind), via) as served:
        answer = (await served.http.get("/check")).json()
        await served.shutdown()
    assert answer == {"isinstance": True, "issubclass": True, "other": False}


def test_isinstance_outside_a_request() -> None:
    batch = trio_background.BackgroundTasks()
    assert isinstance(batch, BackgroundTasks)
    assert issubclass(trio_background.BackgroundTasks, BackgroundTasks)
    assert not isinstance(fastapi.BackgroundTasks(), BackgroundTasks)
    assert not issubclass(int, BackgroundTasks)


def view_router(attribute: Callable[[], Any]) -> APIRouter:
    """fastapi-utils' class-based view whose ``bg`` attribute is declared by ``attribute``."""
    router = APIRouter()
    namespace: dict[str, Any] = {}
    attribute_kind = attribute()
    if isinstance(attribute_kind, tuple):
        namespace["__annotations__"] = {"bg": attribute_kind[0]}
        namespace["bg"] = attribute_kind[1]
    else:
        namespace["__annotations__"] = {"bg": attribute_kind}

    async def post(self: Any) -> dict[str, bool]:
        self.bg.add_task(notify, "view")
        events.append("response")
        return {"ours": isinstance(self.bg, BackgroundTasks)}

    namespace["post"] = router.post("/view")(post)
    cbv(router)(type("RecipeView", (), namespace))
    return router


@pytest.mark.parametrize("kind", ["fastapi", "ours"])
async def test_a_class_based_view_gets_the_batch(via: str, kind: str) -> None:
    events.clear()
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    if kind == "fastapi":
        # FastAPI's class needs nothing more.
        app.include_router(view_router(lambda: fastapi.BackgroundTasks))
    else:
        # get_type_hints drops Annotated: the dependency is written out.
        app.include_router(view_router(lambda: (BackgroundTasks, Depends(get_background_tasks))))
    async with serving(app, via) as served:
        answer = (await served.http.post("/view")).json()
        report = await served.shutdown()
    assert answer == {"ours": kind == "ours"}
    assert events == ["response", "notify view"]
    assert report.count("completed") == (1 if kind == "ours" else 0)


MISSING_DEPENDENCY = (
    r"^a trio_background\.BackgroundTasks parameter or attribute without its dependency: "
    r"FastAPI would read it from the request\. In a handler, type it "
    r"trio_background\.fastapi\.BackgroundTasks; in a class-based view \(fastapi-utils' "
    r"cbv reads attributes with typing\.get_type_hints, which drops the dependency\), "
    r"write `background_tasks: BackgroundTasks = Depends\(get_background_tasks\)`, both "
    r"from trio_background\.fastapi$"
)


def test_a_class_based_view_without_the_dependency_fails_at_startup() -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match=MISSING_DEPENDENCY):
        app.include_router(view_router(lambda: BackgroundTasks))


def test_the_bare_class_in_a_handler_fails_at_startup() -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match=MISSING_DEPENDENCY):

        @app.get("/")
        async def handler(bg: trio_background.BackgroundTasks) -> None: ...
