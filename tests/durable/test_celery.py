"""The hand-off to Celery: FastAPI under real Hypercorn, a real Redis broker, a real Celery worker.

Real time throughout (the broker and the worker are processes); every wait
is for an event (a line the worker prints, a process ending) under a bound.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery", reason="the celery extra is not installed")

import httpx
import redis
import trio
from fastapi import FastAPI

import trio_background
from tests.durable.celery_app import celery_mark, flaky, make_celery, mark
from tests.durable.conftest import Spawn
from tests.processes import Server
from tests.redis_fixture import RedisServer
from trio_background import BackgroundTask, BackgroundTasksMiddleware, TaskState
from trio_background import BackgroundTasks as Batch
from trio_background.celery import CeleryBackend
from trio_background.fastapi import BackgroundTasks
from trio_background.testing import open_live_server


def web_app(
    backend: CeleryBackend,
    plain: Any,
    added: list[BackgroundTask],
    *,
    spill: bool = False,
    waiting: trio.Event | None = None,
) -> FastAPI:
    """``/mark/NAME``: one registered function, one Celery task object, one local task.

    ``/long/NAME`` runs a local task that adds a durable one to its own
    batch (then sets ``waiting``) and never ends.
    """
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, backend=backend, spill=spill)

    def local(name: str) -> None: ...

    @app.post("/mark/{name}")
    async def post_mark(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        added.append(background_tasks.add_task(mark, name))
        added.append(background_tasks.add_task(plain, f"{name}-plain"))
        added.append(background_tasks.add_task(local, name))
        return {"mark": name}

    async def long_local(batch: Batch, name: str) -> None:
        added.append(batch.add_task(mark, name))
        if waiting is not None:
            waiting.set()
        await trio.sleep_forever()

    @app.post("/long/{name}")
    async def long(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        added.append(background_tasks.add_task(long_local, background_tasks, name))
        return {"long": name}

    return app


def waiting_messages(url: str, queue: str) -> int:
    """How many messages wait in Celery's queue (a Redis list) on the broker."""
    with redis.Redis.from_url(url) as client:
        return int(client.llen(queue))  # pyright: ignore[reportArgumentType]


@pytest.fixture
def session_celery(
    redis_server: RedisServer, queue_name: str, durable_env: Path
) -> Iterator[tuple[Any, CeleryBackend, Any]]:
    app, backend, plain = make_celery(redis_server.url, queue_name)
    yield app, backend, plain
    app.close()


async def start_celery_worker(spawn: Spawn, queue: str) -> Server:
    worker = await spawn(
        "-m", "celery", "-A", "tests.durable.celery_app:celery_app", "worker",
        "--pool=solo", "-Q", queue, "--without-heartbeat", "--without-mingle",
        "--without-gossip", "--loglevel=INFO",
    )  # fmt: skip
    await worker.wait_for(r"celery@\S+ ready\.")
    return worker


async def test_a_celery_worker_runs_what_the_request_handed_off(
    session_celery: tuple[Any, CeleryBackend, Any],
    redis_server: RedisServer,
    queue_name: str,
    durable_env: Path,
    spawn: Spawn,
) -> None:
    _app, backend, plain = session_celery
    added: list[BackgroundTask] = []
    async with open_live_server(web_app(backend, plain, added)) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            async with http.stream("POST", "/mark/first") as response:
                # The headers are here: both messages are on the broker.
                assert response.status_code == 200
                assert waiting_messages(redis_server.url, queue_name) == 2
                await response.aread()
        report = await server.shutdown()
    registered, celery_object, local = added
    assert (registered.state, celery_object.state, local.state) == (
        TaskState.HANDED_OFF,
        TaskState.HANDED_OFF,
        TaskState.COMPLETED,
    )
    assert (report.count("handed_off"), report.count("completed")) == (2, 1)
    assert {r.engine_id for r in report.handed_off} == {
        registered.engine_id,
        celery_object.engine_id,
    }
    worker = await start_celery_worker(spawn, queue_name)
    for engine_id in (registered.engine_id, celery_object.engine_id):
        await worker.wait_for(rf"Task tests\.durable\.celery_app\.\w+\[{engine_id}\] succeeded")
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0
    assert (durable_env / "first").read_text() == f"done {worker.process.pid}\n"
    assert (durable_env / "first-plain").read_text() == f"celery {worker.process.pid}\n"


async def test_a_celery_worker_retries_as_the_policy_says(
    session_celery: tuple[Any, CeleryBackend, Any], durable_env: Path, queue_name: str, spawn: Spawn
) -> None:
    _app, backend, _plain = session_celery
    async with backend:
        twice, always = await backend.hand_off(
            [BackgroundTask(flaky, "twice", 2), BackgroundTask(flaky, "always", 5)]
        )
    worker = await start_celery_worker(spawn, queue_name)
    await worker.wait_for(rf"Task tests\.durable\.celery_app\.flaky\[{twice}\] succeeded")
    await worker.wait_for(
        rf"Task tests\.durable\.celery_app\.flaky\[{always}\] raised unexpected: "
        r"ValueError\('always fails attempt 3'\)"
    )
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0
    pid = worker.process.pid
    # retries=2: three attempts at most, the first failures retried at once (backoff=0).
    assert (durable_env / "twice").read_text() == f"attempt {pid}\n" * 3
    assert (durable_env / "always").read_text() == f"attempt {pid}\n" * 3
    for attempt in (1, 2):
        assert re.search(
            rf"Task tests\.durable\.celery_app\.flaky\[{twice}\] retry: Retry in 0s: "
            rf"ValueError\('twice fails attempt {attempt}'\)",
            worker.output,
        ), worker.output


def test_a_policy_becomes_celerys_own_options() -> None:
    app, backend, _plain = make_celery("redis://127.0.0.1:1/0", "q")

    @backend.task(name="t.given", timeout=30, retries=3, retry_on=ConnectionError, backoff=2)
    def given() -> None: ...

    @backend.task(name="t.below")
    @trio_background.task(timeout=5)
    def below() -> None: ...

    celery_given = backend.celery_task(given)
    assert (
        celery_given.time_limit,
        celery_given.max_retries,
        celery_given.autoretry_for,
        celery_given.retry_backoff,
        celery_given.retry_backoff_max,
        celery_given.retry_jitter,
    ) == (30, 3, (ConnectionError,), 2, 60, False)
    assert backend.celery_task(below).time_limit == 5
    app.close()


_ON = r"test_what_celery_cannot_honour_is_refused_at_decoration\.<locals>\.send"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"limit": 5},
            rf"^Celery cannot honour limit= on {_ON}: Celery's rate_limit= spaces out the starts "
            r"in each worker and --concurrency bounds all of a worker's tasks; neither bounds the "
            r"runs of one function across workers; drop limit= \(or leave the function out of "
            r"the backend: in process, limit= holds\)$",
        ),
        (
            {"key": "welcome"},
            rf"^Celery cannot honour key= on {_ON}: Celery has no deduplication: two messages of "
            r"one task both run; drop key= and deduplicate before add_task \(or leave the "
            r"function out of the backend: in process, key= holds\)$",
        ),
        (
            {"timeout": 10, "retries": 2},
            rf"^Celery cannot honour timeout= on {_ON}: Celery's time_limit= kills an attempt "
            r"that runs longer and never retries it, while retry_on= covers TimeoutError; pass "
            r"retry_on= types that do not cover TimeoutError \(as Exception and OSError do\), "
            r"or drop timeout=$",
        ),
        (
            {"retries": 2, "backoff": 0.5},
            rf"^Celery cannot honour backoff= on {_ON}: Celery counts retry_backoff= in whole "
            r"seconds \(it would round 0\.5 down\); pass a whole number of seconds to backoff=$",
        ),
        (
            {"retries": 2, "max_backoff": 90.5},
            rf"^Celery cannot honour max_backoff= on {_ON}: Celery counts retry_backoff_max= in "
            r"whole seconds \(it would round 90\.5 down\); pass a whole number of seconds to "
            r"max_backoff=$",
        ),
    ],
)
def test_what_celery_cannot_honour_is_refused_at_decoration(
    options: dict[str, object], message: str
) -> None:
    app, backend, _plain = make_celery("redis://127.0.0.1:1/0", "q")

    def send() -> None: ...

    with pytest.raises(TypeError, match=message):
        backend.task(name="t.send", **options)(send)
    assert not backend.is_durable(send)
    app.close()


def test_celerys_own_options_and_a_policy_are_not_mixed() -> None:
    app, backend, _plain = make_celery("redis://127.0.0.1:1/0", "q")

    def send() -> None: ...

    with pytest.raises(
        TypeError,
        match=r"^backend\.task got Celery's max_retries= for "
        r"test_celerys_own_options_and_a_policy_are_not_mixed\.<locals>\.send beside a policy: "
        r"give timeout=/retries=/retry_on=/backoff=/max_backoff= or Celery's options, not both$",
    ):
        backend.task(retries=2, max_retries=5)(send)
    app.close()


async def test_a_policy_put_on_after_registration_fails_the_open() -> None:
    app, backend, _plain = make_celery("redis://127.0.0.1:1/0", "q")

    @trio_background.task(retries=2)
    @backend.task(name="t.late")
    def late() -> None: ...

    with pytest.raises(
        TypeError,
        match=r"^test_a_policy_put_on_after_registration_fails_the_open\.<locals>\.late got its "
        r"@trio_background\.task\(\.\.\.\) policy after @backend\.task registered it, so "
        r"Celery's task was built without it: put @trio_background\.task\(\.\.\.\) below "
        r"@backend\.task \(decorators apply bottom-up\), or give the options to "
        r"@backend\.task\(\.\.\.\)$",
    ):
        await backend.open()
    app.close()


async def test_the_broker_down_answers_503_and_publishes_nothing(
    own_redis: RedisServer, queue_name: str, durable_env: Path
) -> None:
    app, backend, plain = make_celery(own_redis.url, queue_name)
    added: list[BackgroundTask] = []
    try:
        async with open_live_server(web_app(backend, plain, added)) as server:
            own_redis.stop()
            async with httpx.AsyncClient(base_url=server.url) as http:
                response = await http.post("/mark/refused")
            assert response.status_code == 503
            report = await server.shutdown()
    finally:
        app.close()
    assert [t.state for t in added] == [TaskState.SKIPPED] * 3
    assert (report.count("skipped"), report.count("handed_off")) == (3, 0)
    own_redis.start()  # nothing reached the broker
    assert waiting_messages(own_redis.url, queue_name) == 0


@pytest.mark.parametrize("spill", [True, False])
async def test_spill_publishes_the_durable_tasks_not_started_at_the_deadline(
    session_celery: tuple[Any, CeleryBackend, Any],
    redis_server: RedisServer,
    queue_name: str,
    spill: bool,
) -> None:
    _app, backend, plain = session_celery
    added: list[BackgroundTask] = []
    waiting = trio.Event()
    app = web_app(backend, plain, added, spill=spill, waiting=waiting)
    async with open_live_server(app, drain_timeout=0.5) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.post("/long/spilled")).status_code == 200
        with trio.fail_after(30):
            await waiting.wait()
        report = await server.shutdown()
    long_task, durable = added
    assert long_task.state is TaskState.CANCELLED
    if spill:
        assert durable.state is TaskState.HANDED_OFF
        [record] = report.handed_off
        assert record.engine_id == durable.engine_id
        assert waiting_messages(redis_server.url, queue_name) == 1
    else:
        assert durable.state is TaskState.SKIPPED
        assert waiting_messages(redis_server.url, queue_name) == 0


async def test_open_fails_with_the_broker_down(own_redis: RedisServer) -> None:
    app, backend, _plain = make_celery(own_redis.url, "q")
    own_redis.stop()
    try:
        with pytest.raises(ConnectionError, match=r"^cannot connect to Celery's broker for "):
            await backend.open()
    finally:
        app.close()


def test_only_plain_functions_register() -> None:
    _app, backend, _plain = make_celery("redis://127.0.0.1:1/0", "q")

    async def not_sync() -> None: ...

    with pytest.raises(
        TypeError, match=r"^backend\.task got an async function .*use trio_background\.streaq"
    ):
        backend.task(not_sync)
    assert backend.is_durable(mark)
    assert not backend.is_durable(celery_mark)  # the function, not Celery's task object


def test_import_without_the_extra_names_the_fix(tmp_path: Path) -> None:
    # A site folder where "celery" cannot be imported; trio_background itself imports fine.
    (tmp_path / "celery.py").write_text("raise ImportError('no celery here')\n")
    code = (
        "import sys, trio_background\n"
        "print('celery' in sys.modules)\n"
        "try:\n    import trio_background.celery\nexcept ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=True,
    )
    assert result.stdout == (
        "False\ntrio_background.celery needs Celery: pip install 'trio-background[celery]'\n"
    )


async def test_the_example_hands_the_invoice_to_a_celery_worker(
    redis_server: RedisServer,
    queue_name: str,
    tmp_path: Path,
    spawn: Spawn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"REDIS_URL": redis_server.url, "OUTBOX": str(tmp_path), "CELERY_QUEUE": queue_name}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    web = await spawn(
        "-m", "trio_background", "examples.durable_celery:app", "--bind", "127.0.0.1:0"
    )
    url = await web.url()
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/orders/42", params={"email": "ada@example.com"})
    assert response.json() == {"order": 42, "invoice": "on its way"}
    web.process.kill()  # a crash right after the answer: the invoice is on the broker
    await web.finish()
    worker = await spawn(
        "-m", "celery", "-A", "examples.durable_celery:celery_app", "worker", "--pool=solo",
        "--without-heartbeat", "--without-mingle", "--without-gossip", "--loglevel=INFO",
    )  # fmt: skip
    await worker.wait_for(r"Task examples\.durable_celery\.send_invoice\[[\w-]+\] succeeded")
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0
    assert (tmp_path / "invoice-42.txt").read_text() == "invoice for order 42 to ada@example.com\n"
