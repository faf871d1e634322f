"""Litestar's background-task tests, ported.

Upstream (litestar-org/litestar at 8bd57248db3fd69aeda9c1ad6250aee2dbabf2b2):
``tests/unit/test_background_tasks.py`` (both cases), and
``tests/examples/test_responses/test_background_tasks.py`` with the apps it
imports, ``docs/examples/responses/background_tasks_1.py``, ``_2.py`` and
``_3.py``. Written anew from what they check, not copied.

Changes: ``BackgroundTask`` / ``BackgroundTasks`` from ``trio_background``
(Litestar's ``background=`` takes them as they are), the app wrapped in
``BackgroundTasksMiddleware``, the trio server, and a wait for the batch.
Sync handlers say ``sync_to_thread=False`` (Litestar warns otherwise, and
warnings are errors here). The log checks read the example's own logger
through a handler of their own, not ``caplog``: Litestar's logging set-up
replaces the root logger's handlers, ``caplog``'s among them.
"""

import logging
from collections.abc import Iterator

import pytest
from litestar import Litestar, Request, Response, get
from litestar.params import FromQuery  # pyright: ignore[reportUnknownVariableType]
from litestar.status_codes import HTTP_200_OK

from trio_background import (
    BackgroundTask,
    BackgroundTasks,
    BackgroundTasksMiddleware,
    from_scope,
)

from .conftest import ServeApp

NO_TASK_GROUP = (
    "docs/guides/porting.rst: \"Litestar's run_in_task_group=True is start_soon: "
    "BackgroundTasks takes no run_in_task_group argument (a TypeError); add the tasks with "
    "start_soon() instead, which runs each beside the batch's sequence.\""
)

logger = logging.getLogger(__name__)


# tests/unit/test_background_tasks.py


async def test_background_tasks_regular_execution(serve: ServeApp) -> None:
    values: list[int] = []

    def extend_values(values_to_extend: list[int]) -> None:
        values.extend(values_to_extend)

    tasks = BackgroundTasks(
        [
            BackgroundTask(extend_values, [1, 2, 3]),
            BackgroundTask(extend_values, values_to_extend=[4, 5, 6]),
        ]
    )

    @get("/", background=tasks, sync_to_thread=False)
    def handler() -> None:
        return None

    async with serve(BackgroundTasksMiddleware(Litestar(route_handlers=[handler]))) as served:
        response = await served.client.get("/")
        assert response.status_code == HTTP_200_OK
        await served.wait_idle()
        assert values == [1, 2, 3, 4, 5, 6]


@pytest.mark.xfail(strict=True, reason=NO_TASK_GROUP)
async def test_background_tasks_task_group_execution(serve: ServeApp) -> None:
    values: list[int] = []

    def extend_values(values_to_extend: list[int]) -> None:
        values.extend(values_to_extend)

    tasks = BackgroundTasks(
        [
            BackgroundTask(extend_values, [1, 2, 3]),
            BackgroundTask(extend_values, values_to_extend=[4, 5, 6]),
        ],
        run_in_task_group=True,  # type: ignore[call-arg]
    )

    @get("/", background=tasks, sync_to_thread=False)
    def handler() -> None:
        return None

    async with serve(BackgroundTasksMiddleware(Litestar(route_handlers=[handler]))) as served:
        response = await served.client.get("/")
        assert response.status_code == HTTP_200_OK
        await served.wait_idle()
        assert set(values) == {1, 2, 3, 4, 5, 6}


# Not upstream: the same two tasks run concurrently, with start_soon.
async def test_background_tasks_start_soon_execution(serve: ServeApp) -> None:
    values: list[int] = []

    def extend_values(values_to_extend: list[int]) -> None:
        values.extend(values_to_extend)

    @get("/", sync_to_thread=False)
    def handler(request: Request) -> None:  # type: ignore[type-arg]
        tasks = from_scope(request.scope)
        tasks.start_soon(extend_values, [1, 2, 3])
        tasks.start_soon(extend_values, values_to_extend=[4, 5, 6])
        return None

    async with serve(BackgroundTasksMiddleware(Litestar(route_handlers=[handler]))) as served:
        response = await served.client.get("/")
        assert response.status_code == HTTP_200_OK
        await served.wait_idle()
        assert set(values) == {1, 2, 3, 4, 5, 6}


# tests/examples/test_responses/test_background_tasks.py and its three apps


async def logging_task(identifier: str, message: str) -> None:
    logger.info("%s: %s", identifier, message)


def example_1() -> Litestar:
    @get("/", sync_to_thread=False)
    def greeter(name: FromQuery[str]) -> Response[dict[str, str]]:
        return Response(
            {"hello": name},
            background=BackgroundTask(
                logging_task, "greeter", message=f"was called with name {name}"
            ),
        )

    return Litestar(route_handlers=[greeter])


def example_2() -> Litestar:
    @get(
        "/",
        background=BackgroundTask(logging_task, "greeter", message="was called"),
        sync_to_thread=False,
    )
    def greeter() -> dict[str, str]:
        return {"hello": "world"}

    return Litestar(route_handlers=[greeter])


def example_3(greeted: set[str]) -> Litestar:
    async def greeting_task(name: str) -> None:
        logger.info("%s was greeted", name)

    async def saving_task(name: str) -> None:
        greeted.add(name)

    @get("/", sync_to_thread=False)
    def greeter(name: FromQuery[str]) -> Response[dict[str, str]]:
        return Response(
            {"hello": name},
            background=BackgroundTasks(
                [BackgroundTask(greeting_task, name), BackgroundTask(saving_task, name)]
            ),
        )

    return Litestar(route_handlers=[greeter])


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def caplog_messages() -> Iterator[list[str]]:
    handler = Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_background_tasks_1(serve: ServeApp, caplog_messages: list[str]) -> None:
    async with serve(BackgroundTasksMiddleware(example_1())) as served:
        name = "Jane"
        res = await served.client.get("/", params={"name": name})
        assert res.status_code == 200
        assert res.json()["hello"] == name
        await served.wait_idle()
        assert len(caplog_messages) == 1
        assert name in caplog_messages[0]


async def test_background_tasks_2(serve: ServeApp, caplog_messages: list[str]) -> None:
    async with serve(BackgroundTasksMiddleware(example_2())) as served:
        res = await served.client.get("/")
        assert res.status_code == 200
        assert "hello" in res.json()
        await served.wait_idle()
        assert len(caplog_messages) == 1
        assert "greeter" in caplog_messages[0]


async def test_background_tasks_3(serve: ServeApp, caplog_messages: list[str]) -> None:
    greeted: set[str] = set()
    async with serve(BackgroundTasksMiddleware(example_3(greeted))) as served:
        name = "Jane"
        res = await served.client.get("/", params={"name": name})
        assert res.status_code == 200
        assert res.json()["hello"] == name
        await served.wait_idle()
        assert len(caplog_messages) == 1
        assert name in caplog_messages[0]
        assert name in greeted
