"""Issue 15: Prometheus metrics, read back with prometheus_client's parser.

A scripted mix of tasks runs through the real middleware under a MockClock,
so every duration, wait and overrun is exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trio_background
from trio_background import (
    BackgroundTask,
    BackgroundTasks,
    BackgroundTasksMiddleware,
    Supervisor,
    from_scope,
)
from trio_background.fastapi import BackgroundTasks as FastAPIBackgroundTasks
from trio_background.prometheus import TaskMetrics, metrics_app
from trio_background.testing import open_client, open_live_server

from .conftest import Receive, Scope, Send, send_text
from .test_cli import Server

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class MemoryBackend:
    """A durable backend that stores in a list: enough for ``handed_off``."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def is_durable(self, func: object) -> bool:
        return getattr(func, "__name__", "") == "send_newsletter"

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def hand_off(self, tasks: Sequence[BackgroundTask]) -> list[str]:
        ids = [f"job-{len(self.stored) + i}" for i in range(len(tasks))]
        self.stored.extend(ids)
        return ids


class Mix:
    """One route per kind of ending."""

    def __init__(self) -> None:
        self.release_thread = threading.Event()
        self.thread_started = trio.Event()
        self.thread_exited = threading.Event()

    async def quick(self) -> None:
        await trio.sleep(2)

    async def boom(self) -> None:
        raise ValueError("nope")

    async def hang(self) -> None:
        await trio.sleep(3600)

    def block(self) -> None:
        try:
            trio.from_thread.run_sync(self.thread_started.set)
            self.release_thread.wait()
        finally:
            self.thread_exited.set()

    async def stubborn(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(60)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        batch = from_scope(scope)
        route = scope["path"]
        if route == "/ok":
            batch.add_task(self.quick)
            batch.add_task(self.quick)
        elif route == "/fail":
            batch.add_task(self.boom)
        elif route == "/durable":
            batch.add_task(send_newsletter)
        elif route == "/long":
            batch.add_task(self.hang)
            batch.add_task(self.quick)
        elif route == "/stubborn":
            batch.add_task(self.stubborn)
        elif route == "/thread":
            batch.add_task(self.block)
        await send_text(send, "ok")


def send_newsletter() -> None:
    raise AssertionError("handed off, never run here")


async def test_metrics_after_a_scripted_mix(autojump_clock: trio.testing.MockClock) -> None:
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry=registry)
    mix = Mix()
    middleware = BackgroundTasksMiddleware(
        mix, drain_timeout=5, observers=[metrics], backend=MemoryBackend()
    )
    served = metrics_app(registry)

    async with open_client(middleware) as client:
        for route in ("/ok", "/fail", "/durable", "/long", "/stubborn"):
            assert (await client.post(route)).text == "ok"
        await trio.sleep(4.5)  # /ok's two tasks are done
        assert (await client.post("/thread")).text == "ok"
        await mix.thread_started.wait()
        # The gauges are read when scraped.
        async with open_client(served) as scraper:
            scrape = await scraper.get("/")
        assert scrape.headers["content-type"].startswith("text/plain; version=")
        live = parse(scrape.text)
        assert live[("trio_background_batches_running", ())] == 3  # long, stubborn, thread
        assert live[("trio_background_threads_busy", ())] == 1
        assert live[("trio_background_tasks_total", (("state", "failed"),))] == 1
        assert live[("trio_background_tasks_total", (("state", "handed_off"),))] == 1
        assert live[("trio_background_tasks_total", (("state", "completed"),))] == 2
        # A wait is observed as its task starts: the three still running count.
        assert live[("trio_background_task_wait_seconds_count", ())] == 6
        assert live[("trio_background_task_wait_seconds_sum", ())] == 2

        client.supervisor.begin_shutdown()  # at 4.5: the deadline is 9.5
        # Virtual time follows real time while a task's thread runs: jump to the deadline.
        autojump_clock.jump(5)
        await trio.testing.wait_all_tasks_blocked()
        abandoned = client.supervisor.task("6.0")
        assert abandoned is not None
        assert abandoned.state.value == "abandoned"
        mix.release_thread.set()
        report = await client.shutdown()
    assert report.counts == {
        "completed": 3,
        "failed": 1,
        "cancelled": 1,
        "skipped": 1,
        "abandoned": 1,
        "handed_off": 1,
    }

    # The abandoned thread holds its limiter token until it really ends.
    await trio.to_thread.run_sync(mix.thread_exited.wait)
    # trio hears of the thread's end through a callback of its own, which may
    # come after ours: let the loop run until it has (a condition, not a time).
    while client.supervisor.limiter.borrowed_tokens:
        await trio.lowlevel.checkpoint()
    await trio.testing.wait_all_tasks_blocked()
    after = parse(generate_latest(registry).decode())
    for state, count in report.counts.items():
        assert after[("trio_background_tasks_total", (("state", state),))] == count

    def histogram(name: str, state: str | None = None) -> tuple[float, float]:
        labels = () if state is None else (("state", state),)
        return after[(f"{name}_count", labels)], after[(f"{name}_sum", labels)]

    duration = "trio_background_task_duration_seconds"
    assert histogram(duration, "completed") == (3, 2 + 2 + 60)
    assert histogram(duration, "failed") == (1, 0)
    assert histogram(duration, "cancelled") == (1, 9.5)  # /long's, cut at the deadline
    assert histogram(duration, "abandoned") == (1, 5)  # from 4.5 to the deadline
    # Skipped and handed-off tasks never started: no duration.
    assert (f"{duration}_count", (("state", "skipped"),)) not in after
    assert (f"{duration}_count", (("state", "handed_off"),)) not in after
    # The second quick task waited 2 s for the first; the others not at all.
    assert histogram("trio_background_task_wait_seconds") == (6, 2)
    # The shielded task ended at 60, 50.5 s after the deadline.
    assert histogram("trio_background_shutdown_overrun_seconds") == (1, 50.5)
    assert after[("trio_background_batches_running", ())] == 0
    assert after[("trio_background_threads_busy", ())] == 0


def test_two_metrics_on_one_registry_say_what_to_do() -> None:
    registry = CollectorRegistry()
    TaskMetrics(registry=registry)
    with pytest.raises(
        ValueError,
        match=r"^trio_background's metrics are already registered on this registry: make one "
        r"TaskMetrics per registry and pass the same one to every middleware, or give this "
        r"one its own: TaskMetrics\(registry=CollectorRegistry\(\)\)$",
    ):
        TaskMetrics(registry=registry)


async def test_metrics_app_is_read_only_and_http_only() -> None:
    served = metrics_app(CollectorRegistry())
    async with open_client(served) as client:
        assert (await client.post("/")).status_code == 405
        response = await client.get("/", headers={"accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text.endswith("# EOF\n")

    async def receive() -> dict[str, object]:
        raise AssertionError

    async def send(message: object) -> None:
        raise AssertionError

    with pytest.raises(RuntimeError, match=r"^the metrics app serves HTTP only, got a 'websocket'"):
        await served({"type": "websocket"}, receive, send)


async def test_hypercorn_workers_add_up_through_the_directory(tmp_path: Path) -> None:
    """Whole processes: plain Hypercorn, 2 trio workers, one scrape sees both."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "--worker-class",
            "trio",
            "--workers",
            "2",
            "--graceful-timeout",
            "5",
            "--bind",
            "127.0.0.1:0",
            "tests.metrics_workers_app:app",
        ],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    server = Server(process)
    try:
        match = await server.wait_for(r"(?s)Running on (http://127\.0\.0\.1:\d+).*Running on")
        url = match.group(1)
        pids: set[str] = set()
        posts = 0
        with trio.fail_after(30):
            # A new connection each time: the kernel hands them to either worker.
            while len(pids) < 2:
                async with httpx.AsyncClient(base_url=url) as client:
                    pids.add((await client.post("/work")).text)
                posts += 1
            async with httpx.AsyncClient(base_url=url) as client:
                # Every worker's task has ended once its counter says so.
                while True:
                    scraped = parse((await client.get("/metrics")).text)
                    completed = scraped[("trio_background_tasks_total", (("state", "completed"),))]
                    if completed == posts:
                        break
                    await trio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        await server.finish()
    assert len(pids) == 2
    assert (
        scraped[("trio_background_task_duration_seconds_count", (("state", "completed"),))] == posts
    )


def test_a_scrape_from_outside_trio_leaves_the_gauges_empty() -> None:
    registry = CollectorRegistry()
    supervisor = Supervisor()  # the metrics hold it weakly
    TaskMetrics(registry=registry, supervisor=supervisor)
    # As prometheus_client.start_http_server's thread would scrape it.
    scraped = parse(generate_latest(registry).decode())
    assert ("trio_background_batches_running", ()) not in scraped
    assert scraped[("trio_background_tasks_total", (("state", "completed"),))] == 0


async def test_the_gauges_add_up_every_supervisor_watched() -> None:
    registry = CollectorRegistry()
    first, second = Supervisor(), Supervisor()
    metrics = TaskMetrics(registry=registry, supervisor=first)
    metrics.watch(second)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for supervisor in (first, second, second):
            batch = BackgroundTasks()
            batch.add_task(release.wait)
            nursery.start_soon(supervisor.run, batch)
        await trio.testing.wait_all_tasks_blocked()
        scraped = parse(generate_latest(registry).decode())
        release.set()
    assert scraped[("trio_background_batches_running", ())] == 3


# Issue 25: metrics in one step, served through real Hypercorn.


def fastapi_app(
    metrics_page: object, observers: Sequence[TaskMetrics] = ()
) -> tuple[FastAPI, trio.Event]:
    """An app whose /work adds a task that waits for ``release``, the page at /metrics."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, observers=list(observers))
    release = trio.Event()

    @app.post("/work")
    async def work(background_tasks: FastAPIBackgroundTasks) -> str:
        background_tasks.add_task(release.wait)
        return "ok"

    @app.post("/quick")
    async def quick(background_tasks: FastAPIBackgroundTasks) -> str:
        background_tasks.add_task(trio.lowlevel.checkpoint)
        return "ok"

    app.add_route("/metrics", metrics_page, include_in_schema=False)  # type: ignore[arg-type]
    return app, release


async def test_metrics_page_answers_its_path_and_any_accept_header() -> None:
    metrics = TaskMetrics(registry=CollectorRegistry())
    app, release = fastapi_app(metrics.app(), observers=[metrics])
    release.set()
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/work")
        await server.supervisor.wait_idle()
        plain = await client.get("/metrics")
        malformed = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.x"}
        )
        openmetrics = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    # No redirect to /metrics/: the page itself, with no note (the wiring is right).
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert not plain.text.startswith("# trio_background:")
    assert parse(plain.text)[("trio_background_tasks_total", (("state", "completed"),))] == 1
    # A version prometheus_client cannot read gets the default format, not a 500.
    assert malformed.status_code == 200
    assert malformed.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert parse(malformed.text) == parse(plain.text)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


async def test_metrics_page_wires_its_observer_and_says_what_was_missed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = TaskMetrics(registry=CollectorRegistry())
    app, release = fastapi_app(metrics.app())  # the middleware was not given the metrics
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/quick")
        await server.supervisor.wait_idle()
        await client.post("/work")  # running at the first scrape: counted when it ends
        first = await client.get("/metrics")
        await client.post("/work")
        await client.post("/work")
        await trio.testing.wait_all_tasks_blocked()  # both tasks wait for release
        second = await client.get("/metrics")
        release.set()
        await server.supervisor.wait_idle()
        third = await client.get("/metrics")
    note = (
        "# trio_background: TaskMetrics was not an observer of this app until this scrape: "
        "the 1 tasks that ended before it are not counted. Pass it to the middleware to "
        "count from the start: BackgroundTasksMiddleware(app, observers=[metrics])\n"
    )
    assert first.text.startswith(note)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "metrics page: " + note[len("# trio_background: ") : -1]
    ]
    # From the first scrape on, tasks are counted: waits as they start, gauges.
    live = parse(second.text)
    assert not second.text.startswith("# trio_background")
    assert live[("trio_background_task_wait_seconds_count", ())] == 2
    assert live[("trio_background_batches_running", ())] == 3
    done = parse(third.text)
    assert done[("trio_background_tasks_total", (("state", "completed"),))] == 3


async def test_metrics_page_without_task_metrics_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, release = fastapi_app(metrics_app(CollectorRegistry()))
    release.set()
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        scraped = await client.get("/metrics")
    note = (
        "no TaskMetrics on this registry, so this page has no task metrics: make one and "
        "serve its page: metrics = TaskMetrics(); BackgroundTasksMiddleware(app, "
        'observers=[metrics]); app.add_route("/metrics", metrics.app())'
    )
    assert scraped.status_code == 200
    assert scraped.text == f"# trio_background: {note}\n"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"metrics page: {note}"
    ]


# Issue 26: retries and timeouts, through real Hypercorn under a MockClock.


def policy_app(metrics: TaskMetrics) -> FastAPI:
    """``POST /mix`` adds one task of each kind; ``POST /hang`` one that waits forever
    and one behind it."""
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, observers=[metrics])
    app.add_route("/metrics", metrics.app(), include_in_schema=False)
    calls: list[float] = []

    @trio_background.task(retries=3, backoff=2, retry_on=ConnectionError)
    async def flaky() -> None:
        calls.append(trio.current_time())
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")

    @trio_background.task(timeout=5, retries=1, backoff=1)
    async def slow() -> None:
        await trio.sleep(60)

    async def plain() -> None:
        await trio.sleep(1)

    async def own_timeout() -> None:
        # Its own TimeoutError, with no policy: a failure, not a policy's timeout.
        raise TimeoutError("timed out after 5 s")

    async def hang() -> None:
        await trio.sleep_forever()

    @app.post("/mix")
    async def mix(background_tasks: FastAPIBackgroundTasks) -> None:
        for func in (flaky, slow, plain, own_timeout):
            background_tasks.start_soon(func)

    @app.post("/hang")
    async def hang_route(background_tasks: FastAPIBackgroundTasks) -> None:
        background_tasks.add_task(hang)
        background_tasks.add_task(plain)

    return app


async def test_attempts_and_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    metrics = TaskMetrics(registry=CollectorRegistry())
    app = policy_app(metrics)
    async with open_live_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/mix")
        await server.supervisor.wait_idle()
        scraped = parse((await http.get("/metrics")).text)
        await http.post("/hang")
        await trio.testing.wait_all_tasks_blocked()
        report = await server.shutdown(mode="cancel")
    after = parse(generate_latest(metrics.registry).decode())
    assert [(r.name.rsplit(".", 1)[-1], r.attempts) for r in report.completed] == [
        ("flaky", 3),
        ("plain", 1),
    ]
    assert [(r.name.rsplit(".", 1)[-1], r.attempts, r.error) for r in report.failed] == [
        ("slow", 2, "TimeoutError: timed out after 5 s"),
        ("own_timeout", 1, "TimeoutError: timed out after 5 s"),
    ]
    attempts = "trio_background_task_attempts"
    completed = (("state", "completed"),)
    failed = (("state", "failed"),)
    # flaky ran 3 times, plain once; slow twice (both timed out), own_timeout once.
    assert (scraped[(f"{attempts}_count", completed)], scraped[(f"{attempts}_sum", completed)]) == (
        2,
        4,
    )
    assert scraped[(f"{attempts}_bucket", (("le", "1.0"), *completed))] == 1
    assert scraped[(f"{attempts}_bucket", (("le", "2.0"), *completed))] == 1
    assert scraped[(f"{attempts}_bucket", (("le", "3.0"), *completed))] == 2
    assert (scraped[(f"{attempts}_count", failed)], scraped[(f"{attempts}_sum", failed)]) == (2, 3)
    # Only the policy's timeout counts.
    assert scraped[("trio_background_task_timeouts_total", ())] == 1
    # The cut task had run once; the one skipped behind it never started: not observed.
    assert after[(f"{attempts}_count", (("state", "cancelled"),))] == 1
    assert after[(f"{attempts}_sum", (("state", "cancelled"),))] == 1
    assert (f"{attempts}_count", (("state", "skipped"),)) not in after
    assert after[("trio_background_task_timeouts_total", ())] == 1
