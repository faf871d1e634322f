"""The monitor page in a real headless browser (Debian's chromium, driven by Playwright).

The screenshot is kept as a test artifact in ``test-artifacts/monitor.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
from fastapi import FastAPI

import trio_background
from trio_background import BackgroundTask, BackgroundTasksMiddleware, monitor, report_progress
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium: apt-get install chromium (.ci/run installs it)",
)

# As the workplace's notes advise for a closed network: no background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium, closed on the way out (from a worker thread: sync API)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


async def import_contacts(steps: list[trio.Event]) -> None:
    for done, step in enumerate(steps):
        report_progress(done, len(steps), message=f"batch {done + 1} of {len(steps)}")
        await step.wait()
    report_progress(len(steps), len(steps), message="done")


async def test_progress_bar_moves_and_task_completes() -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    app.mount("/admin/tasks", monitor(poll_interval=0.1))
    steps = [trio.Event() for _ in range(3)]

    @app.post("/import")
    async def start(background_tasks: BackgroundTasks) -> dict[str, str | None]:
        return {"id": background_tasks.add_task(import_contacts, steps).id}

    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            task_id = (await client.post("/import")).json()["id"]

        def browse() -> tuple[str, str, int]:
            row = f'[id="task-{task_id}"]'
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1000, "height": 500})
                page.set_default_timeout(20_000)
                page.goto(f"{server.url}/admin/tasks/")
                page.wait_for_selector(f'{row} [role=progressbar][aria-valuenow="0"]')
                trio.from_thread.run_sync(steps[0].set)
                page.wait_for_selector(f'{row} [role=progressbar][aria-valuenow="1"]')
                trio.from_thread.run_sync(steps[1].set)
                page.wait_for_selector(f'{row} [role=progressbar][aria-valuenow="2"]')
                width = page.eval_on_selector(f"{row} .bar > div", "e => e.style.width")
                page.screenshot(path=str(ARTIFACTS / "monitor.png"))
                trio.from_thread.run_sync(steps[2].set)
                page.wait_for_selector(f'{row}[data-state="completed"]')
                state = page.inner_text(f"{row} .state-completed")
            return width, state, (ARTIFACTS / "monitor.png").stat().st_size

        width, state, screenshot_size = await trio.to_thread.run_sync(browse)
    assert width == "66.7%"
    assert state == "completed"
    assert screenshot_size > 1000


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


async def test_hostile_names_stay_text_and_a_hidden_tab_stops_polling() -> None:
    release = trio.Event()

    async def wait() -> None:
        await release.wait()

    wait.__qualname__ = HOSTILE
    polls: list[str] = []
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    inner = monitor(poll_interval=0.1, page_limit=5)

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].endswith("/tasks"):
            polls.append(scope["query_string"].decode())
        await inner(scope, receive, send)

    app.mount("/admin/tasks", counted)

    @app.post("/many")
    async def many(background_tasks: BackgroundTasks) -> None:
        for _ in range(12):
            background_tasks.add_task(wait)

    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/many")).status_code == 200

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with chromium() as browser:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"{server.url}/admin/tasks/")
                page.wait_for_selector('[id="task-1.0"]')
                seen["shown"] = page.inner_text("#shown")
                seen["rows"] = page.eval_on_selector_all("#active tr", "rows => rows.length")
                seen["name"] = page.inner_text('[id="task-1.0"] td:nth-child(2)')
                seen["images"] = page.eval_on_selector_all("#active img", "e => e.length")
                # The next page follows the cursor.
                page.click("#next")
                page.wait_for_selector('[id="task-1.5"]')
                # Hide the tab: the page stops polling (no timer left).
                page.evaluate(
                    """() => {
                      Object.defineProperty(document, "visibilityState",
                        {value: "hidden", configurable: true});
                      document.dispatchEvent(new Event("visibilitychange"));
                    }"""
                )
                page.wait_for_function("() => timer === null")
                seen["hidden_polls"] = trio.from_thread.run_sync(len, polls)
                seen["still_hidden"] = page.evaluate("() => timer === null")
                # Shown again: it polls at once.
                page.evaluate(
                    """() => {
                      Object.defineProperty(document, "visibilityState",
                        {value: "visible", configurable: true});
                      document.dispatchEvent(new Event("visibilitychange"));
                    }"""
                )
                page.wait_for_function("() => timer !== null")
                seen["pwned"] = page.evaluate("() => window.pwned === undefined")
                seen["errors"] = errors
            return seen

        seen = await trio.to_thread.run_sync(browse)
        release.set()
    assert seen["shown"] == "Showing 5 of 12."
    assert seen["rows"] == 5
    assert seen["name"] == HOSTILE
    assert seen["images"] == 0
    assert seen["pwned"] is True
    assert seen["errors"] == []
    assert seen["still_hidden"] is True
    assert len(polls) > seen["hidden_polls"]
    assert polls[0] == "limit=5"
    assert "limit=5&after=1.4" in polls


async def test_the_page_names_its_worker_and_says_when_it_lost_contact() -> None:
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    app.mount("/admin/tasks", monitor(poll_interval=0.1))
    stop = trio.Event()

    async def serve_until_stopped(*, task_status: trio.TaskStatus[str]) -> None:
        async with open_live_server(app) as server:
            task_status.started(server.url)
            await stop.wait()

    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve_until_stopped)

        def browse() -> tuple[str, str]:
            with chromium() as browser:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                page.goto(f"{url}/admin/tasks/")
                page.wait_for_selector('#contact[data-state="live"]')
                live = page.inner_text("#contact")
                trio.from_thread.run_sync(stop.set)  # the server goes away
                # Within a few seconds (3 s without an answer, at this interval).
                page.wait_for_selector('#contact[data-state="lost"]')
                lost = page.inner_text("#contact")
            return live, lost

        live, lost = await trio.to_thread.run_sync(browse)
    assert live.startswith(f"Showing worker pid {os.getpid()}; last heard from the server ")
    assert lost.startswith("Lost contact with the server: no answer for ")
    assert lost.endswith(f"what is shown is worker pid {os.getpid()} as of then.")


# Issue 26: the cancel button, and what a page on another origin can do with it.


class Recorder:
    """An ASGI wrapper that notes each request's method, headers and answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []
        self.posts = 0
        self.posted = trio.Event()
        self.expected_posts = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "GET":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        note: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "sec-fetch-site": headers.get("sec-fetch-site"),
            "content-type": headers.get("content-type"),
            "x-requested-with": headers.get("x-requested-with"),
        }

        async def noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                note["status"] = message["status"]
                self.seen.append(note)
                if scope["method"] == "POST":
                    self.posts += 1
                    if self.posts == self.expected_posts:
                        self.posted.set()
            await send(message)

        await self.app(scope, receive, noting)


def hanging_app() -> tuple[FastAPI, Recorder, list[BackgroundTask]]:
    """A monitor that allows cancelling at /admin/tasks, a read-only one at /readonly."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)
    recorder = Recorder(monitor(poll_interval=0.1, allow_cancel=True))
    app.mount("/admin/tasks", recorder)
    app.mount("/readonly", monitor(poll_interval=0.1))
    handles: list[BackgroundTask] = []
    calls: list[int] = []

    async def hang() -> None:
        await trio.sleep_forever()

    @trio_background.task(retries=2, backoff=0, retry_on=ConnectionError)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")

    @app.post("/hang")
    async def start(background_tasks: BackgroundTasks) -> str | None:
        handles.append(background_tasks.add_task(hang))
        return handles[-1].id

    @app.post("/flaky")
    async def flaky_route(background_tasks: BackgroundTasks) -> str | None:
        handles.append(background_tasks.add_task(flaky))
        return handles[-1].id

    return app, recorder, handles


async def test_the_cancel_button_cancels_a_running_task() -> None:
    app, recorder, handles = hanging_app()
    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            flaky_id = (await client.post("/flaky")).json()
            await handles[0].wait()
            task_id = (await client.post("/hang")).json()
            other_id = (await client.post("/hang")).json()

        def browse() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            row = f'[id="task-{task_id}"]'
            with chromium() as browser:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                # Without allow_cancel: no button.
                page.goto(f"{server.url}/readonly/")
                page.wait_for_selector(f"#active {row}")
                seen["readonly_buttons"] = page.eval_on_selector_all(
                    "button.cancel", "e => e.length"
                )
                page.goto(f"{server.url}/admin/tasks/")
                page.wait_for_selector(f"#active {row} button.cancel")
                seen["buttons"] = page.eval_on_selector_all(
                    "#active button.cancel", "e => e.length"
                )
                seen["attempts"] = page.inner_text(f'[id="task-{flaky_id}"] .attempts')
                seen["one_attempt"] = page.inner_text(f"#active {row} .attempts")
                page.click(f"#active {row} button.cancel")
                page.wait_for_selector(f'#finished {row}[data-state="cancelled"]')
                seen["status"] = page.inner_text("#cancel-status")
                seen["other"] = page.get_attribute(f'[id="task-{other_id}"]', "data-state")
                seen["errors"] = errors
            return seen

        seen = await trio.to_thread.run_sync(browse)
        report = await server.shutdown(mode="cancel")
    assert seen["readonly_buttons"] == 0
    assert seen["buttons"] == 2
    assert seen["attempts"] == "3 attempts"
    assert seen["one_attempt"] == ""
    assert seen["status"] == f"Cancelled task {task_id}."
    assert seen["other"] == "running"
    assert seen["errors"] == []
    [post] = [note for note in recorder.seen if note["method"] == "POST"]
    assert post == {
        "method": "POST",
        "path": f"/admin/tasks/tasks/{task_id}/cancel",
        "sec-fetch-site": "same-origin",
        "content-type": "application/json",
        "x-requested-with": "trio-background-monitor",
        "status": 200,
    }
    assert [(r.id, r.reason) for r in report.cancelled] == [
        (task_id, "cancelled by the app"),
        (other_id, "cancelled while running"),
    ]
    [completed] = report.completed
    assert (completed.id, completed.attempts) == (flaky_id, 3)


HOSTILE_PAGE = """<!doctype html>
<html><body>
<iframe name="sink"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink" action="__URL__">
<input type="hidden" name='{"a": "' value='b"}'>
</form>
<script>
const URL_ = "__URL__";
const HEADERS = {"X-Requested-With": "trio-background-monitor",
                 "Content-Type": "application/json"};
window.results = {};
(async () => {
  try {
    const r = await fetch(URL_, {method: "POST", headers: HEADERS, body: "{}"});
    window.results.cors = "answered " + r.status;
  } catch (e) { window.results.cors = "refused: " + e.name; }
  try {
    const r = await fetch(URL_, {method: "POST", mode: "no-cors", headers: HEADERS, body: "{}"});
    window.results.nocors = r.type;
  } catch (e) { window.results.nocors = "refused: " + e.name; }
  document.getElementById("form").submit();
  window.results.done = true;
})();
</script>
</body></html>
"""


async def test_a_page_on_another_origin_cannot_cancel() -> None:
    app, recorder, _ = hanging_app()
    recorder.expected_posts = 2  # the no-cors fetch and the form; the CORS one never leaves
    async with open_live_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            task_id = (await client.post("/hang")).json()
        cancel_url = f"{server.url}/admin/tasks/tasks/{task_id}/cancel"
        page_html = HOSTILE_PAGE.replace("__URL__", cancel_url).encode()

        async def hostile(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": page_html})

        async with open_live_server(hostile) as other:
            assert other.url != server.url  # another port: another origin

            async def all_posts_answered() -> None:
                with trio.fail_after(20):
                    await recorder.posted.wait()

            def browse() -> dict[str, Any]:
                with chromium() as browser:
                    page = browser.new_page()
                    page.set_default_timeout(20_000)
                    page.goto(f"{other.url}/")
                    page.wait_for_function("() => window.results.done === true")
                    trio.from_thread.run(all_posts_answered)
                    results: dict[str, Any] = page.evaluate("() => window.results")
                return results

            results = await trio.to_thread.run_sync(browse)
        await trio.testing.wait_all_tasks_blocked()
        still = server.supervisor.task(task_id)
        assert still is not None
        assert still.state.value == "running"
        report = await server.shutdown(mode="cancel")
    # The browser refused the CORS fetch itself: its preflight got no CORS headers.
    assert results["cors"] == "refused: TypeError"
    assert results["nocors"] == "opaque"
    # The preflight (answered without CORS headers), then the no-cors fetch and the form.
    requests = [(n["method"], n["status"], n["sec-fetch-site"]) for n in recorder.seen]
    assert requests == [
        ("OPTIONS", 405, "same-site"),
        ("POST", 403, "same-site"),
        ("POST", 403, "same-site"),
    ]
    # What a form and a no-cors fetch can send: neither the header nor the type.
    for note in recorder.seen[1:]:
        assert note["x-requested-with"] is None
        assert note["content-type"].startswith("text/plain")
    assert [(r.id, r.reason) for r in report.cancelled] == [(task_id, "cancelled while running")]
