"""Issue 8: task ids, states and progress, the bounded history, and the monitor app."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from fastapi import FastAPI, Request

from trio_background import (
    BackgroundTasks,
    BackgroundTasksMiddleware,
    Progress,
    Supervisor,
    TaskState,
    monitor,
    report_progress,
    supervisor_from_scope,
)
from trio_background.fastapi import BackgroundTasks as BackgroundTasksDependency
from trio_background.testing import open_client


def progress_app(steps: int = 4) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, keep_records=3)
    app.mount("/admin/tasks", monitor())

    async def crunch(n: int) -> None:
        for i in range(n):
            report_progress(i, n, message=f"step {i}")
            await trio.sleep(10)
        report_progress(n, n, message="done")

    def sync_crunch(n: int) -> None:
        for i in range(n + 1):
            report_progress(i, n)

    @app.post("/crunch")
    async def start(background_tasks: BackgroundTasksDependency) -> dict[str, str | None]:
        task = background_tasks.add_task(crunch, steps)
        other = background_tasks.add_task(sync_crunch, 3)
        return {"id": task.id, "other": other.id}

    return app


async def test_ids_states_and_progress(autojump_clock: trio.testing.MockClock) -> None:
    async with open_client(progress_app()) as client:
        ids = (await client.post("/crunch")).json()
        assert re.fullmatch(r"\d+\.0", ids["id"])
        assert ids["other"] == ids["id"].replace(".0", ".1")
        await trio.sleep(15)  # the task is in its second step
        record = client.supervisor.task(ids["id"])
        assert record is not None
        assert record.state is TaskState.RUNNING
        assert record.request == "POST /crunch"
        assert record.progress == Progress(1, 4, "step 1")
        assert record.progress.fraction == 0.25
        assert record.started_at == 0
        assert record.ended_at is None
        pending = client.supervisor.task(ids["other"])
        assert pending is not None
        assert pending.state is TaskState.PENDING
        await client.wait_idle()
        done = client.supervisor.task(ids["id"])
        assert done is not None
        assert done.state is TaskState.COMPLETED
        assert done.progress == Progress(4, 4, "done")
        assert done.ended_at == 40
        other = client.supervisor.task(ids["other"])
        assert other is not None
        assert other.progress == Progress(3, 3, None)
        assert client.supervisor.task("no-such-id") is None
        assert client.supervisor.task("999.0") is None


async def test_history_is_bounded_oldest_dropped_first() -> None:
    supervisor = Supervisor(keep_records=3)
    ids: list[str | None] = []
    for _ in range(5):
        batch = BackgroundTasks()
        ids.append(batch.add_task(trio.lowlevel.checkpoint).id)
        await supervisor.run(batch)
    assert ids[0] is None  # a standalone batch gets ids when it starts
    snapshot = supervisor.snapshot()
    assert [r.id for r in snapshot.finished] == ["3.0", "4.0", "5.0"]
    assert snapshot.counts["completed"] == 5
    assert supervisor.task("1.0") is None
    assert supervisor.task("5.0") is not None


async def test_snapshot_during_shutdown_shows_what_will_be_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Supervisor(drain_timeout=30)
    batch = BackgroundTasks()
    batch.add_task(trio.sleep, 3600)
    batch.add_task(trio.sleep, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch)
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.snapshot().shutting_down is False
        supervisor.begin_shutdown()
        await trio.sleep(10)
        snapshot = supervisor.snapshot()
        assert snapshot.shutting_down
        assert snapshot.deadline_in == 20
        assert [(r.id, r.state.value) for r in snapshot.active] == [
            ("1.0", "running"),
            ("1.1", "pending"),
        ]
        await supervisor.shutdown()


async def test_report_progress_outside_a_task() -> None:
    with pytest.raises(
        RuntimeError,
        match=r"^report_progress\(\) was called outside a background task: call it from a "
        r"function run by add_task\(\) \(sync or async\), while it runs$",
    ):
        report_progress(1, 2)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((-1, 2), ValueError, r"^report_progress\(\) done must be a finite number >= 0, got -1$"),
        ((1, 0), ValueError, r"^report_progress\(\) total must be a finite number > 0, got 0$"),
        (("1", 2), TypeError, r"^report_progress\(\) done must be a number, got str$"),
        ((1, "2"), TypeError, r"^report_progress\(\) total must be a number or None, got str$"),
    ],
)
async def test_report_progress_bad_values(
    args: tuple[object, object], error: type[Exception], message: str
) -> None:
    raised: list[BaseException] = []

    async def task() -> None:
        try:
            report_progress(*args)  # type: ignore[arg-type]
        except Exception as exc:
            raised.append(exc)

    await BackgroundTasks([]).add_task(task)()
    (exc,) = raised
    assert isinstance(exc, error)
    assert re.match(message, str(exc))


async def test_monitor_json_endpoints(autojump_clock: trio.testing.MockClock) -> None:
    async with open_client(progress_app()) as client:
        ids = (await client.post("/crunch")).json()
        await trio.sleep(15)
        snapshot = (await client.get("/admin/tasks/tasks")).json()
        assert snapshot["shutting_down"] is False
        assert [t["id"] for t in snapshot["active"]] == [ids["id"], ids["other"]]
        running = snapshot["active"][0]
        assert running["state"] == "running"
        assert running["progress"] == {"done": 1, "total": 4, "message": "step 1"}
        one = (await client.get(f"/admin/tasks/tasks/{ids['id']}")).json()
        assert one["state"] == "running"
        missing = await client.get("/admin/tasks/tasks/7.7")
        assert missing.status_code == 404
        assert (await client.post("/admin/tasks/tasks")).status_code == 405
        assert (await client.get("/admin/tasks/nope")).status_code == 404
        page = await client.get("/admin/tasks/")
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert 'const TASKS_URL = "/admin/tasks/tasks";' in page.text
        await client.wait_idle()
        finished = (await client.get("/admin/tasks/tasks")).json()["finished"]
        assert [(t["id"], t["state"]) for t in finished] == [
            (ids["id"], "completed"),
            (ids["other"], "completed"),
        ]


async def test_monitor_without_a_supervisor_says_what_to_do() -> None:
    bare = monitor()
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await bare({"type": "http", "method": "GET", "path": "/tasks"}, receive, send)
    assert sent[0]["status"] == 500
    assert sent[1]["body"] == (
        b"the task monitor found no supervisor: mount it inside an app that has "
        b"BackgroundTasksMiddleware, or pass one: monitor(supervisor=...)"
    )
    with pytest.raises(ValueError, match=r"^poll_interval must be > 0 seconds, got 0$"):
        monitor(poll_interval=0)
    with pytest.raises(
        RuntimeError, match=r"^the task monitor serves HTTP only, got a 'websocket'"
    ):
        await bare({"type": "websocket"}, receive, send)


async def test_endpoint_reaches_the_supervisor_from_its_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = progress_app()

    @app.get("/status/{task_id}")
    async def status(task_id: str, request: Request) -> dict[str, object]:
        record = supervisor_from_scope(request.scope).task(task_id)
        return {"state": None if record is None else record.state.value}

    async with open_client(app) as client:
        task_id = (await client.post("/crunch")).json()["id"]
        assert (await client.get(f"/status/{task_id}")).json() == {"state": "running"}
        await client.wait_idle()
        assert (await client.get(f"/status/{task_id}")).json() == {"state": "completed"}
    with pytest.raises(RuntimeError, match=r"^this request has no background tasks batch: "):
        supervisor_from_scope({"type": "http"})
