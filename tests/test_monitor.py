"""Issue 8: task ids, states and progress, the bounded history, and the monitor app."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tracemalloc
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI, Request

import trio_background
from trio_background import (
    BackgroundTask,
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
from trio_background.testing import BackgroundClient, open_client, open_live_server


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
        assert 'data-tasks-url="/admin/tasks/tasks"' in page.text
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
        await trio.testing.wait_all_tasks_blocked()  # the batch has started
        assert (await client.get(f"/status/{task_id}")).json() == {"state": "running"}
        await client.wait_idle()
        assert (await client.get(f"/status/{task_id}")).json() == {"state": "completed"}
    with pytest.raises(RuntimeError, match=r"^this request has no background tasks batch: "):
        supervisor_from_scope({"type": "http"})


# Issue 15: a monitor that stays cheap at 20,000 tasks, and answers odd input briefly.

ACTIVE = 20_000
PER_REQUEST = 1_000


def crowded_app(release: trio.Event) -> FastAPI:
    """Every POST /many adds PER_REQUEST tasks that wait for ``release``."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    app.mount("/admin/tasks", monitor())

    @app.post("/many")
    async def many(background_tasks: BackgroundTasksDependency) -> None:
        for _ in range(PER_REQUEST):
            background_tasks.add_task(release.wait)

    return app


async def poll_peak_bytes(client: BackgroundClient, url: str) -> tuple[dict[str, Any], int]:
    """The JSON of one poll and the peak of memory allocated while serving it."""
    tracemalloc.start()
    try:
        response = await client.get(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200
    return response.json(), peak


async def test_a_poll_at_20000_tasks_builds_one_page(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()
    async with open_client(crowded_app(release)) as client:
        await client.post("/many")
        await client.get("/admin/tasks/tasks")  # warm: first-request caches are not the poll's
        small, small_peak = await poll_peak_bytes(client, "/admin/tasks/tasks")
        for _ in range(ACTIVE // PER_REQUEST - 1):
            await client.post("/many")
        await trio.testing.wait_all_tasks_blocked()
        crowded, crowded_peak = await poll_peak_bytes(client, "/admin/tasks/tasks")
        assert client.supervisor.statistics().tasks_active == ACTIVE

        # One page, of the default size, and exact counts.
        assert crowded["limit"] == 100
        assert crowded["active_count"] == ACTIVE
        assert crowded["batches_running"] == ACTIVE // PER_REQUEST
        assert len(crowded["active"]) == 100
        assert [r["id"] for r in crowded["active"][:2]] == ["1.0", "1.1"]
        assert crowded["active"][0]["state"] == "running"
        assert crowded["next"] == crowded["active"][-1]["id"]
        # Built only what it returned: a poll at 20,000 tasks takes the memory
        # of a poll at 1,000, where building every record would take 20 times it.
        assert len(small["active"]) == 100
        assert crowded_peak < 2 * small_peak

        # The pages, followed by their cursors, give every task once, in order.
        seen: list[str] = []
        after: str | None = None
        while True:
            query = "limit=1000" + ("" if after is None else f"&after={after}")
            page = (await client.get(f"/admin/tasks/tasks?{query}")).json()
            assert page["active_count"] == ACTIVE
            seen.extend(r["id"] for r in page["active"])
            after = page["next"]
            if after is None:
                break
        assert len(seen) == ACTIVE
        assert seen == [f"{b}.{i}" for b in range(1, 21) for i in range(PER_REQUEST)]
        release.set()


@pytest.mark.parametrize(
    "path",
    [
        "/admin/tasks/tasks/%C2%B2.0",  # "²" is a digit to str.isdigit(), not to int()
        "/admin/tasks/tasks/" + "9" * 5000 + ".0",
        "/admin/tasks/tasks/1." + "9" * 5000,
        "/admin/tasks/tasks/1.0/extra",
        "/admin/tasks/tasks/-1.0",
        "/admin/tasks/tasks/1",
        "/admin/tasks/tasks/%00",
        "/admin/tasks/tasks/",
    ],
)
async def test_odd_ids_are_a_short_404(path: str) -> None:
    async with open_client(progress_app()) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": "no such task, or its record was dropped"}
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be a whole number from 1 to 1000, got '0'"),
        ("limit=1001", "limit must be a whole number from 1 to 1000, got '1001'"),
        ("limit=abc", "limit must be a whole number from 1 to 1000, got 'abc'"),
        ("limit=", "limit must be a whole number from 1 to 1000, got ''"),
        ("limit=%C2%B2", "limit must be a whole number from 1 to 1000, got '²'"),
        (
            "limit=" + "9" * 5000,
            "limit must be a whole number from 1 to 1000, got '" + "9" * 40 + "...'",
        ),
        (
            "after=%C2%B2.0",
            "after must be a task id such as 1.0 (the 'next' of the previous page), got '².0'",
        ),
        (
            "after=1",
            "after must be a task id such as 1.0 (the 'next' of the previous page), got '1'",
        ),
        (
            f"after={os.getpid() + 1}-1.0",
            f"after must be a task id of worker pid {os.getpid()}, got '{os.getpid() + 1}-1.0': "
            "this page's cursor came from another worker; start again from the first page",
        ),
    ],
)
async def test_a_query_it_cannot_read_is_a_short_400(query: str, message: str) -> None:
    async with open_client(progress_app()) as client:
        response = await client.get(f"/admin/tasks/tasks?{query}")
    assert response.status_code == 400
    assert response.text == message
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_page_allows_only_its_own_script() -> None:
    async with open_client(progress_app()) as client:
        page = await client.get("/admin/tasks/")
        data = await client.get("/admin/tasks/tasks")
    policy = page.headers["content-security-policy"]
    [script] = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    [style] = re.findall(r"<style>(.*?)</style>", page.text, re.DOTALL)

    def digest(source: str) -> str:
        return base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()

    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == f"'sha256-{digest(script)}'"
    assert directives["style-src"] == f"'sha256-{digest(style)}'"
    assert directives["connect-src"] == "'self'"
    for response in (page, data):
        assert response.headers["x-content-type-options"] == "nosniff"
    assert data.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    # The page's data lives in attributes, escaped; the script reads them.
    assert 'data-limit="100"' in page.text


def test_page_limit_is_checked() -> None:
    with pytest.raises(ValueError, match=r"^page_limit must be an int from 1 to 1000, got 0$"):
        monitor(page_limit=0)
    assert monitor(page_limit=1000).page_limit == 1000


async def test_handed_off_tasks_show_with_their_engine_id() -> None:
    from .test_prometheus import MemoryBackend, send_newsletter

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, backend=MemoryBackend())
    app.mount("/admin/tasks", monitor())

    @app.post("/newsletter")
    async def newsletter(background_tasks: BackgroundTasksDependency) -> None:
        background_tasks.add_task(send_newsletter)

    async with open_client(app) as client:
        await client.post("/newsletter")
        await client.wait_idle()
        data = (await client.get("/admin/tasks/tasks")).json()
        one = (await client.get("/admin/tasks/tasks/1.0")).json()
    assert data["counts"]["handed_off"] == 1
    [record] = data["finished"]
    assert (record["state"], record["engine_id"]) == ("handed_off", "job-0")
    assert one == record


# Issue 26: a cancel button, only when the app opts in, that no other origin can press.

CANCEL_HEADERS = {
    "X-Requested-With": "trio-background-monitor",
    "Content-Type": "application/json",
}


def cancellable_app(*, allow_cancel: bool) -> tuple[FastAPI, list[BackgroundTask]]:
    """``POST /hang`` adds a task that waits forever; ``POST /two`` adds it and one after it."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    app.mount("/admin/tasks", monitor(allow_cancel=allow_cancel))
    handles: list[BackgroundTask] = []

    async def hang() -> None:
        await trio.sleep_forever()

    async def later() -> None:
        pass

    @app.post("/hang")
    async def one(background_tasks: BackgroundTasksDependency) -> str | None:
        handles.append(background_tasks.add_task(hang))
        return handles[-1].id

    @app.post("/two")
    async def two(background_tasks: BackgroundTasksDependency) -> list[str | None]:
        handles.append(background_tasks.add_task(hang))
        handles.append(background_tasks.add_task(later))
        return [handles[-2].id, handles[-1].id]

    return app, handles


async def test_without_allow_cancel_there_is_no_button_and_no_endpoint() -> None:
    app, handles = cancellable_app(allow_cancel=False)
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        task_id = (await http.post("/hang")).json()
        await trio.testing.wait_all_tasks_blocked()
        posted = await http.post(f"/admin/tasks/tasks/{task_id}/cancel", headers=CANCEL_HEADERS)
        got = await http.get(f"/admin/tasks/tasks/{task_id}/cancel")
        page = await http.get("/admin/tasks/")
        assert handles[0].state is TaskState.RUNNING
        report = await server.shutdown(mode="cancel")
    assert posted.status_code == 405
    assert posted.text == "the task monitor is read-only: use GET"
    assert posted.headers["allow"] == "GET, HEAD"
    assert got.status_code == 404
    assert 'data-cancel="off"' in page.text
    assert [r.reason for r in report.cancelled] == ["cancelled while running"]


async def test_cancel_from_the_page_answers_what_it_changed() -> None:
    app, handles = cancellable_app(allow_cancel=True)
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        running = (await http.post("/hang")).json()
        other, pending = (await http.post("/two")).json()
        await trio.testing.wait_all_tasks_blocked()
        page = await http.get("/admin/tasks/")

        async def cancel(task_id: str, **headers: str) -> httpx.Response:
            return await http.post(
                f"/admin/tasks/tasks/{task_id}/cancel",
                headers={**CANCEL_HEADERS, **headers},
                content=b"{}",
            )

        skipped = await cancel(pending)
        cut = await cancel(running, origin=server.url)  # a browser without Sec-Fetch-Site
        await handles[0].wait()
        again = await cancel(running)
        unknown = await cancel("7.7")
        not_an_id = await cancel("%C2%B2.0")
        elsewhere = await cancel(f"{os.getpid() + 1}-1.0")
        got = await http.get(f"/admin/tasks/tasks/{other}/cancel")
        elsewhere_posted = await http.post("/admin/tasks/tasks", headers=CANCEL_HEADERS)
        report = await server.shutdown(mode="cancel")
    assert 'data-cancel="on"' in page.text
    assert (elsewhere_posted.status_code, elsewhere_posted.text) == (
        405,
        "the task monitor is read-only: use GET (or POST /tasks/<id>/cancel from its page)",
    )
    assert (skipped.status_code, skipped.json()) == (
        200,
        {"id": pending, "cancelled": True, "state": "skipped"},
    )
    # The cut reaches the task at its next checkpoint, after the answer.
    assert (cut.status_code, cut.json()) == (
        200,
        {"id": running, "cancelled": True, "state": "running"},
    )
    assert (again.status_code, again.json()) == (
        200,
        {"id": running, "cancelled": False, "state": "cancelled"},
    )
    for missing in (unknown, not_an_id):
        assert missing.status_code == 404
        assert missing.json() == {"error": "no such task, or its record was dropped"}
    assert elsewhere.status_code == 404
    assert elsewhere.json() == {
        "error": f"task {os.getpid() + 1}-1.0 belongs to worker pid {os.getpid() + 1}, and "
        f"this is pid {os.getpid()}: cancel it from a page that worker served"
    }
    assert (got.status_code, got.headers["allow"]) == (405, "POST")
    assert [(r.id, r.reason) for r in report.cancelled] == [
        (running, "cancelled by the app"),
        (other, "cancelled while running"),
    ]
    assert [(r.id, r.reason) for r in report.skipped] == [(pending, "cancelled by the app")]


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        # What an HTML form can send: none of its encodings is JSON, and it sets no header.
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            "the request lacks the header X-Requested-With: trio-background-monitor",
        ),
        (
            {"Content-Type": "text/plain", "X-Requested-With": "trio-background-monitor"},
            "the request's Content-Type is not application/json",
        ),
        (
            {**CANCEL_HEADERS, "X-Requested-With": "XMLHttpRequest"},
            "the request lacks the header X-Requested-With: trio-background-monitor",
        ),
        # An app whose CORS middleware answered the preflight: the browser still says.
        (
            {**CANCEL_HEADERS, "Sec-Fetch-Site": "same-site"},
            "the browser says the request comes from another origin (same-site)",
        ),
        (
            {**CANCEL_HEADERS, "Sec-Fetch-Site": "cross-site"},
            "the browser says the request comes from another origin (cross-site)",
        ),
        (
            {**CANCEL_HEADERS, "Origin": "http://127.0.0.1:1"},
            "the request's Origin is not this server",
        ),
        ({**CANCEL_HEADERS, "Origin": "null"}, "the request's Origin is not this server"),
    ],
)
async def test_a_forged_cancel_is_refused(headers: dict[str, str], why: str) -> None:
    app, handles = cancellable_app(allow_cancel=True)
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        task_id = (await http.post("/hang")).json()
        await trio.testing.wait_all_tasks_blocked()
        refused = await http.post(
            f"/admin/tasks/tasks/{task_id}/cancel", headers=headers, content=b'{"a": "b"}'
        )
        await trio.testing.wait_all_tasks_blocked()
        still = server.supervisor.task(task_id)
        assert still is not None
        assert still.state is TaskState.RUNNING
        # The same request from the page itself is honoured.
        honoured = await http.post(
            f"/admin/tasks/tasks/{task_id}/cancel",
            headers={**CANCEL_HEADERS, "Sec-Fetch-Site": "same-origin"},
        )
        await handles[0].wait()
    assert refused.status_code == 403
    assert refused.text == f"cancel refused: {why}; cancel tasks from the monitor's own page"
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert honoured.json()["cancelled"] is True
    assert handles[0].state is TaskState.CANCELLED


def test_allow_cancel_is_checked() -> None:
    with pytest.raises(TypeError, match=r"^allow_cancel must be True or False, got 'yes'$"):
        monitor(allow_cancel="yes")  # type: ignore[arg-type]


async def test_the_monitor_shows_attempts_and_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    app.mount("/admin/tasks", monitor())
    calls: list[int] = []

    @trio_background.task(retries=2, backoff=3, retry_on=ConnectionError)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")

    @trio_background.task(timeout=2, retries=1, backoff=1)
    async def slow() -> None:
        await trio.sleep(60)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasksDependency) -> None:
        background_tasks.add_task(flaky)
        background_tasks.add_task(slow)

    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/work")
        await server.supervisor.wait_idle()
        finished = (await http.get("/admin/tasks/tasks")).json()["finished"]
        one = (await http.get("/admin/tasks/tasks/1.1")).json()
    # slow: an attempt of 2 s, a wait of 1 s, an attempt of 2 s.
    assert [(r["id"], r["state"], r["attempts"], r["error"]) for r in finished] == [
        ("1.0", "completed", 3, None),
        ("1.1", "failed", 2, "TimeoutError: timed out after 2 s"),
    ]
    assert one["ended_at"] - one["started_at"] == 5
