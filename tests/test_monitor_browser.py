"""The monitor page in a real headless browser (Debian's chromium, driven by Playwright).

The screenshot is kept as a test artifact in ``test-artifacts/monitor.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
