"""The monitor page in a real headless browser (Debian's chromium, driven by Playwright).

The screenshot is kept as a test artifact in ``test-artifacts/monitor.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fastapi import FastAPI

from trio_background import BackgroundTasksMiddleware, monitor, report_progress
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_live_server

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


async def import_contacts(steps: list[trio.Event]) -> None:
    for done, step in enumerate(steps):
        report_progress(done, len(steps), message=f"batch {done + 1} of {len(steps)}")
        await step.wait()
    report_progress(len(steps), len(steps), message="done")


async def test_progress_bar_moves_and_task_completes() -> None:
    from playwright.sync_api import sync_playwright

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
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
                )
                try:
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
                finally:
                    browser.close()
            return width, state, (ARTIFACTS / "monitor.png").stat().st_size

        width, state, screenshot_size = await trio.to_thread.run_sync(browse)
    assert width == "66.7%"
    assert state == "completed"
    assert screenshot_size > 1000


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


async def test_hostile_names_stay_text_and_a_hidden_tab_stops_polling() -> None:
    from playwright.sync_api import sync_playwright

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
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
                )
                try:
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
                finally:
                    browser.close()
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
    from playwright.sync_api import sync_playwright

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
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(20_000)
                    page.goto(f"{url}/admin/tasks/")
                    page.wait_for_selector('#contact[data-state="live"]')
                    live = page.inner_text("#contact")
                    trio.from_thread.run_sync(stop.set)  # the server goes away
                    # Within a few seconds (3 s without an answer, at this interval).
                    page.wait_for_selector('#contact[data-state="lost"]')
                    lost = page.inner_text("#contact")
                finally:
                    browser.close()
            return live, lost

        live, lost = await trio.to_thread.run_sync(browse)
    assert live.startswith(f"Showing worker pid {os.getpid()}; last heard from the server ")
    assert lost.startswith("Lost contact with the server: no answer for ")
    assert lost.endswith(f"what is shown is worker pid {os.getpid()} as of then.")
