"""The documentation: every snippet runs, and the site builds with ``-nW``.

Each runnable code block of the docs is a file in ``docs/snippets/`` that a
page shows with ``literalinclude``. Each snippet has a test here that loads
it, drives its ``app`` (with the in-process client) or its ``main()``, and
checks what it did, so the docs cannot drift from the library. A last test
builds the site the way CI does, with warnings as errors.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from fastapi import FastAPI
from sphinx.util import parselinenos

import trio_background
import trio_background.fastapi
import trio_background.testing
from trio_background import TaskState
from trio_background.testing import open_client

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

DOCS = Path(__file__).resolve().parent.parent / "docs"
SNIPPETS = DOCS / "snippets"


@pytest.fixture
def load_snippet(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import ``docs/snippets/<name>.py`` afresh (its module state is per test)."""

    def load(name: str) -> ModuleType:
        path = SNIPPETS / f"{name}.py"
        module_name = f"_docs_snippet_{name}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, module_name, module)
        spec.loader.exec_module(module)
        return module

    return load


# index.rst, quickstart.rst


async def test_basic_writes_the_notification_after_the_response(
    load_snippet: Callable[[str], ModuleType],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    snippet = load_snippet("basic")
    async with open_client(snippet.app) as client:
        response = await client.post("/send-notification/ada@example.com")
        assert response.status_code == 200
        assert response.json() == {"message": "Notification sent in the background"}
        await client.wait_idle()
        report = await client.shutdown()
    log = (tmp_path / "log.txt").read_text()
    assert log == "notification for ada@example.com: some notification\n"
    assert report.count(TaskState.COMPLETED) == report.total == 1


# concepts.rst


async def test_order_tasks_run_after_the_response_in_order(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("order")
    async with open_client(snippet.app) as client:
        start = trio.current_time()
        response = await client.put("/files/a.txt")
        assert response.json() == {"status": "stored"}
        # The response is back; notify_owner needs a (virtual) second more.
        assert "a.txt: owner notified" not in snippet.events
        await client.wait_idle()
        assert trio.current_time() - start == 1
    assert snippet.events == ["a.txt: stored", "a.txt: sha256 7bb6f9f7", "a.txt: owner notified"]
    assert client.supervisor.thread_limit == 4


async def test_context_tasks_see_the_request_id(
    load_snippet: Callable[[str], ModuleType],
) -> None:
    snippet = load_snippet("context")
    async with open_client(snippet.app) as client:
        for item_id in (1, 2):
            response = await client.delete(
                f"/items/{item_id}", headers={"x-request-id": f"req-{item_id}"}
            )
            assert response.status_code == 200
            await client.wait_idle()
    assert snippet.audit_log == ["[req-1] deleted item 1", "[req-2] deleted item 2"]


async def test_errors_a_failure_is_logged_hooked_and_the_next_task_runs(
    load_snippet: Callable[[str], ModuleType], caplog: pytest.LogCaptureFixture
) -> None:
    snippet = load_snippet("errors")
    caplog.set_level(logging.ERROR, logger="trio_background")
    async with open_client(snippet.app) as client:
        response = await client.post("/orders/7/pay")
        assert response.json() == {"status": "processing"}
        await client.wait_idle()
        report = await client.shutdown()
    assert snippet.sent == ["receipt for order 7"]
    assert snippet.alerts == [
        "charge_card failed for POST /orders/7/pay: ConnectionError: payment gateway unreachable"
    ]
    [logged] = [r for r in caplog.records if r.name == "trio_background"]
    assert logged.levelno == logging.ERROR
    assert "charge_card" in logged.getMessage()
    assert "POST /orders/7/pay" in logged.getMessage()
    assert logged.exc_info is not None
    assert isinstance(logged.exc_info[1], ConnectionError)
    assert (report.count("failed"), report.count("completed")) == (1, 1)


async def test_on_error_stop_skips_the_rest_of_the_batch(
    load_snippet: Callable[[str], ModuleType], caplog: pytest.LogCaptureFixture
) -> None:
    snippet = load_snippet("on_error_stop")
    async with open_client(snippet.app) as client:
        await client.post("/orders/7/pay")
        await client.wait_idle()
        report = await client.shutdown()
    assert snippet.sent == []
    [skipped] = report.skipped
    assert skipped.name == "send_receipt"
    assert skipped.reason == "task 1.0 (charge_card) failed and on_error='stop'"
    assert any(r.name == "trio_background" for r in caplog.records)


async def test_skipped_tasks_of_a_handler_that_raised_do_not_run(
    load_snippet: Callable[[str], ModuleType],
) -> None:
    snippet = load_snippet("skipped")
    async with open_client(snippet.app) as client:
        refused = await client.post("/signup/eve@elsewhere.test")
        assert refused.status_code == 403
        welcomed = await client.post("/signup/ada@example.com")
        assert welcomed.status_code == 200
        await client.wait_idle()
        report = await client.shutdown()
    assert snippet.sent == ["ada@example.com"]
    [skipped] = report.skipped
    assert skipped.request == "POST /signup/eve@elsewhere.test"
    assert skipped.reason == "the handler raised HTTPException"


# shutdown.rst


async def test_shutdown_report_output_and_log_are_the_ones_shown(
    load_snippet: Callable[[str], ModuleType],
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    snippet = load_snippet("shutdown_report")
    caplog.set_level(logging.WARNING, logger="trio_background")
    report = await snippet.main()
    assert report.count("completed") == 1
    assert [r.name for r in report.cancelled] == ["rebuild_search_index"]
    assert [r.name for r in report.skipped] == ["notify_warehouse"]
    # The page shows these files as the program's output and its log line;
    # if the report's format changed on purpose, regenerate them with
    #   python docs/snippets/shutdown_report.py > docs/snippets/shutdown_report.out \
    #       2> docs/snippets/shutdown_report.log
    assert capsys.readouterr().out == (SNIPPETS / "shutdown_report.out").read_text()
    [logged] = [r.getMessage() for r in caplog.records if r.name == "trio_background"]
    assert f"{logged}\n" == (SNIPPETS / "shutdown_report.log").read_text()


async def test_serve_program_stops_on_sigint_and_prints_the_report(
    load_snippet: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    snippet = load_snippet("serve_program")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(snippet.main, "127.0.0.1:0")
            # Everything blocked: serve() is listening for signals, and
            # Hypercorn for connections.
            await trio.testing.wait_all_tasks_blocked()
            signal.raise_signal(signal.SIGINT)
    out = capsys.readouterr().out
    assert out.endswith(
        "background tasks (drain, timeout 20s, on signal): 0 total: 0 completed, 0 failed, "
        "0 cancelled, 0 skipped, 0 abandoned\n"
    )


# guides/


async def test_guide_fastapi_dependency_and_handler_share_the_batch(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("guide_fastapi")
    async with open_client(snippet.app) as client:
        response = await client.post("/reports/q3")
        assert response.json() == {"report": "q3", "task": "build_report", "state": "pending"}
        await client.wait_idle()
        assert client.supervisor.drain_timeout == 20
        assert client.supervisor.thread_limit == 4
    assert snippet.done == ["visit /reports/q3", "report q3"]


async def test_guide_starlette_from_scope(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("guide_starlette")
    async with open_client(snippet.app) as client:
        response = await client.put("/images/cat")
        assert response.status_code == 202
        assert snippet.thumbnails == []
        await client.wait_idle()
        assert client.supervisor.drain_timeout == 20
    assert snippet.thumbnails == ["cat"]


async def test_guide_asgi_raw_app(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("guide_asgi")
    async with open_client(snippet.app) as client:
        response = await client.get("/hello")
        assert response.text == "hello\n"
        await client.wait_idle()
        report = await client.shutdown()
    assert snippet.visits == ["/hello"]
    assert report.count("completed") == 1


async def test_porting_add_task_and_await_tasks(
    load_snippet: Callable[[str], ModuleType],
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    snippet = load_snippet("porting")
    await snippet.main()
    print(*snippet.log, sep="\n")  # what the snippet prints when run as a program
    # The page shows this file as the program's output (regenerate with
    # python docs/snippets/porting.py > docs/snippets/porting.out).
    assert capsys.readouterr().out == (SNIPPETS / "porting.out").read_text()
    assert snippet.log[-1] == "states: completed, failed, skipped"


# examples.rst: the seed's code (docs/seed/, verbatim), each example beside
# it, and the port's lines highlighted. Sphinx does not check that the
# highlighted lines are the right ones: these tests do.

EXAMPLES = DOCS.parent / "examples"
PORT_LINES = {
    "from trio_background import BackgroundTasksMiddleware",
    "from trio_background.fastapi import BackgroundTasks",
    "app.add_middleware(BackgroundTasksMiddleware)",
}
# What the listings of the examples that go beyond the port highlight.
BUILTIN_PROGRESS = re.compile(
    r"report_progress\(|\.add_task\(.*\)\.id$|supervisor_from_scope\(|^app\.mount\("
)
POLICIES = re.compile(
    r"^@trio_background\.task\(|^    (retries|retry_on|backoff|max_backoff|timeout|limit|key)=|"
    r"\.add_task\(|task\.result\b|task\.id\b"
)


def _directives(page: str) -> list[tuple[str, str, dict[str, str], list[str]]]:
    """Each ``literalinclude`` and ``code-block`` of ``page``, in order.

    Returns ``(directive, argument, options, content)`` tuples; the content
    lines are dedented.
    """
    found: list[tuple[str, str, dict[str, str], list[str]]] = []
    lines = page.splitlines()
    for number, line in enumerate(lines):
        match = re.fullmatch(r"(\s*)\.\. (literalinclude|code-block):: (.+)", line)
        if match is None:
            continue
        indent = len(match[1]) + 3
        options: dict[str, str] = {}
        body: list[str] = []
        for following in lines[number + 1 :]:
            option = re.fullmatch(rf"\s{{{indent}}}:([\w-]+):\s*(.*)", following)
            if option is not None and not body:
                options[option[1]] = option[2]
            elif not following.strip() or following.startswith(" " * indent):
                body.append(following[indent:])
            else:
                break
        while body and not body[-1]:
            body.pop()
        found.append((match[2], match[3], options, body[1:] if body[:1] == [""] else body))
    return found


def _shown_and_emphasized(argument: str, options: dict[str, str]) -> tuple[list[str], list[str]]:
    """The lines a ``literalinclude`` shows, and those it highlights."""
    lines = (DOCS / argument).read_text().splitlines()
    if "start-at" in options:
        lines = lines[lines.index(options["start-at"]) :]
    indexes = parselinenos(options.get("emphasize-lines", ""), len(lines))
    return lines, [lines[i] for i in indexes]


def test_examples_page_shows_each_seed_and_example() -> None:
    included = [
        a
        for d, a, _, _ in _directives((DOCS / "examples.rst").read_text())
        if d == "literalinclude"
    ]
    seeds = {path.stem for path in (DOCS / "seed").glob("*.py")}
    # durable*.py are not seeds: docs/durable.rst shows them, tests/durable/ runs them.
    examples = {path.stem for path in EXAMPLES.glob("*.py")} - {
        "__init__",
        "demo",
        "durable",
        "durable_celery",
    }
    others = {"quart_app"}  # not FastAPI: shown by its guide, docs/guides/quart.rst
    assert len(seeds) == 9
    assert examples == seeds | {"progress_builtin", "policies"} | others
    assert sorted(included) == sorted(
        [f"seed/{name}.py" for name in seeds]
        + [f"../examples/{name}.py" for name in examples - others]
    )
    for name in examples:
        assert (DOCS.parent / "tests" / "examples" / f"test_{name}.py").is_file()


def test_examples_page_highlights_the_right_lines() -> None:
    for directive, argument, options, _ in _directives((DOCS / "examples.rst").read_text()):
        if directive != "literalinclude":
            continue
        shown, emphasized = _shown_and_emphasized(argument, options)
        if argument.startswith("seed/"):
            assert emphasized == [line for line in shown if line.startswith("from fastapi import")]
            assert "BackgroundTasks" in emphasized[0]
        elif argument == "../examples/progress_builtin.py":
            assert emphasized
            assert all(BUILTIN_PROGRESS.search(line) for line in emphasized), emphasized
        elif argument == "../examples/policies.py":
            # The policy, the handle's reads, and each add_task: all of them.
            assert emphasized == [line for line in shown if POLICIES.search(line)]
        else:
            # Exactly the port's lines, each shown once, and all of them.
            assert sorted(emphasized) == sorted(PORT_LINES), argument
            assert sorted(line for line in shown if line in PORT_LINES) == sorted(PORT_LINES)


def test_examples_page_diffs_are_the_port_of_the_seed_shown_next() -> None:
    directives = _directives((DOCS / "examples.rst").read_text())
    diffs = 0
    for position, (directive, argument, _, body) in enumerate(directives):
        if (directive, argument) != ("code-block", "diff"):
            continue
        diffs += 1
        seed = next(a for _, a, _, _ in directives[position:] if a.startswith("seed/"))
        seed_lines = (DOCS / seed).read_text().splitlines()
        removed = [line[1:] for line in body if line.startswith("-")]
        added = [line[1:] for line in body if line.startswith("+")]
        kept = [line[1:] for line in body if line.startswith(" ")]
        assert [line[:1] for line in body if line] == ["-", "+", "+", "+", " ", "+"]
        [old_import] = removed
        assert old_import in seed_lines
        assert all(line in seed_lines for line in kept)
        assert added[0] == old_import.replace(", BackgroundTasks", "")
        assert set(added[1:]) == PORT_LINES
    assert diffs == 10  # "The change", then each example that has a seed


# monitoring.rst


async def test_monitoring_ids_progress_and_the_monitor(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("monitoring")
    async with open_client(snippet.app) as client:
        assert (await client.post("/imports", params={"rows": 3})).json() == {"id": "1.0"}
        await trio.sleep(1.5)  # import_contacts is on its second row
        running = (await client.get("/imports/1.0")).json()
        snapshot = (await client.get("/admin/tasks/tasks")).json()
        page = await client.get("/admin/tasks/")
        await client.wait_idle()
        imported = (await client.get("/imports/1.0")).json()
        resized = (await client.get("/imports/1.1")).json()
        missing = await client.get("/imports/7.0")
        assert client.supervisor.keep_records == 500
    assert running["state"] == "running"
    assert running["request"] == "POST /imports"
    assert running["progress"] == {"done": 1, "total": 3, "message": "row 2 of 3"}
    assert running["ended_at"] is None
    assert [(r["id"], r["state"]) for r in snapshot["active"]] == [
        ("1.0", "running"),
        ("1.1", "pending"),
    ]
    assert page.status_code == 200
    assert "<title>Background tasks</title>" in page.text
    assert imported["state"] == "completed"
    assert imported["progress"] == {"done": 3, "total": 3, "message": "done"}
    assert imported["ended_at"] == 3
    # The sync task reported from its worker thread.
    assert resized["state"] == "completed"
    assert resized["progress"] == {"done": 3, "total": 3, "message": None}
    assert missing.status_code == 404


async def test_monitoring_metrics_served_beside_the_app(
    load_snippet: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    import prometheus_client

    import trio_background.prometheus

    # The snippet registers on the global registry: give it a fresh one.
    monkeypatch.setattr(
        trio_background.prometheus, "REGISTRY", prometheus_client.CollectorRegistry()
    )
    monkeypatch.chdir(tmp_path)
    snippet = load_snippet("metrics")
    async with open_client(snippet.app) as client:
        await client.post("/send-notification/ada@example.com")
        await client.wait_idle()
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert not scraped.text.startswith("# trio_background:")  # nothing missing
    assert 'trio_background_tasks_total{state="completed"} 1.0' in scraped.text
    assert "trio_background_batches_running 0.0" in scraped.text
    assert (tmp_path / "log.txt").read_text() == "notification for ada@example.com\n"


def test_monitoring_report_progress_outside_a_task_says_so() -> None:
    with pytest.raises(RuntimeError) as raised:
        trio_background.report_progress(1, 2)
    # The page quotes the message.
    page = " ".join((DOCS / "monitoring.rst").read_text().split())
    assert f"RuntimeError: {raised.value}" in page


async def test_monitor_auth_needs_the_token(
    load_snippet: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret")
    snippet = load_snippet("monitor_auth")
    async with open_client(snippet.app) as client:
        missing = await client.get("/admin/tasks/tasks")
        wrong = await client.get("/admin/tasks/", headers={"authorization": "Bearer nope"})
        allowed = await client.get("/admin/tasks/tasks", headers={"authorization": "Bearer s3cret"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200
    assert allowed.json()["counts"]["completed"] == 0

    # An empty token (ADMIN_TOKEN set but blank) lets nobody in.
    locked = FastAPI()
    locked.mount("/admin", snippet.admin_only(trio_background.monitor(), ""))
    async with open_client(locked) as client:
        refused = await client.get("/admin/tasks", headers={"authorization": "Bearer "})
    assert refused.status_code == 401


# policies.rst


async def test_policies_retry_with_backoff_and_dedup_by_key(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("policies")
    async with open_client(snippet.app) as client:
        first = (await client.post("/accounts/acme/sync")).json()
        again = (await client.post("/accounts/acme/sync")).json()
        await client.wait_idle()
        report = await client.shutdown()
    assert again == first  # the same task: its key is taken while it is pending
    # Attempts at 0 s, then 2 s and 4 s apart.
    start = float(snippet.calls[0].split(" at ")[1])
    assert [float(c.split(" at ")[1]) - start for c in snippet.calls] == [0, 2, 6]
    [record] = report.completed
    assert (record.id, record.attempts) == (first["task"], 3)
    assert report.total == 1


async def test_handles_wait_result_and_cancel(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("handles")
    async with open_client(snippet.app) as client:
        done = (await client.post("/reports/q3")).json()["task"]
        await client.wait_idle()
        cut = (await client.post("/reports/q4")).json()["task"]
        await trio.sleep(1)  # q4 is rendering
        cancelled = await client.delete(f"/tasks/{cut}")
        await client.wait_idle()
        again = await client.delete(f"/tasks/{cut}")
        report = await client.shutdown()
    assert snippet.published == ["q3.pdf"]  # q4 was cut: nothing to publish
    assert cancelled.json() == {"cancelled": True}
    assert again.status_code == 404
    states = {r.id: (r.name, r.state.value, r.reason) for r in report.completed + report.cancelled}
    assert states[done] == ("render", "completed", None)
    assert states[cut] == ("render", "cancelled", "cancelled by the app")
    assert report.count("completed") == 3  # two publish tasks and one render


async def test_cleanup_runs_even_when_the_handler_raised(
    load_snippet: Callable[[str], ModuleType],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    snippet = load_snippet("cleanup")
    async with open_client(snippet.app) as client:
        stored = await client.put("/documents/a", params={"text": "hello"})
        refused = await client.put("/documents/b", params={"text": " "})
        await client.wait_idle()
        report = await client.shutdown()
    assert (stored.status_code, refused.status_code) == (200, 422)
    assert snippet.indexed == ["hello"]
    assert list((tmp_path / "spool").iterdir()) == []  # both files removed
    [skipped] = report.skipped
    assert (skipped.name, skipped.request) == ("index", "PUT /documents/b")
    assert report.count("completed") == 3  # index a, and both cleanups


async def test_app_tasks_run_under_the_deadline_and_report(
    load_snippet: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    snippet = load_snippet("app_tasks")
    async with open_client(snippet.app) as client:
        await trio.sleep(150)
        report = await client.shutdown(mode="drain", drain_timeout=10)
    assert [t - snippet.refreshes[0] for t in snippet.refreshes] == [0, 60, 120]
    [record] = report.cancelled
    assert (record.name, record.request) == ("refresh_rates", "app")


async def test_websocket_batch_beside_the_handler_then_after_close(
    load_snippet: Callable[[str], ModuleType],
) -> None:
    from tests.examples.helpers import websocket_session

    snippet = load_snippet("websocket")
    seen: list[list[str]] = []
    async with trio_background.testing.open_live_server(snippet.app) as server:
        answers = await websocket_session(
            server.url,
            "/echo?name=ada",
            ["hi", "bye"],
            before_close=lambda: seen.append(list(snippet.audit)),
        )
        await server.supervisor.wait_idle()
        report = await server.shutdown()
    assert answers == ["hi", "bye"]
    assert seen == [["ada opened"]]  # the add_task task waits for the close
    assert snippet.audit == ["ada opened", "ada closed after 2 messages"]
    assert {r.request for r in report.completed} == {"WEBSOCKET /echo"}


# The docs as a whole


def test_every_snippet_is_tested_and_shown() -> None:
    tested = set(re.findall(r'load_snippet\("(\w+)"\)', Path(__file__).read_text()))
    snippets = {path.stem for path in SNIPPETS.glob("*.py")}
    assert snippets == tested
    pages = "\n".join(path.read_text() for path in DOCS.rglob("*.rst"))
    included = set(re.findall(r"literalinclude:: (?:\.\./)*snippets/([\w./]+)", pages))
    files = {
        str(path.relative_to(SNIPPETS))
        for path in SNIPPETS.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    # snippets/testing/ holds test files: tests/test_testing_docs.py runs them.
    assert included == files


def test_api_reference_covers_the_public_surface() -> None:
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?:class|function|data):: (\w+)$", api, re.M))
    public = set(trio_background.__all__) | set(trio_background.testing.__all__)
    public |= set(trio_background.fastapi.__all__)
    assert public - documented == set(), "add these to docs/api.rst"


def _sphinx_major() -> int:
    import sphinx

    return sphinx.version_info[0]


# conf.py tidies signatures the way Sphinx 9 writes them (type aliases in
# unions, ParamSpecs); Sphinx 9 needs Python 3.11, where CI builds the site.
@pytest.mark.skipif(_sphinx_major() < 9, reason="the docs are built with Sphinx 9+ (Python 3.11+)")
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-nW",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "html" / "index.html").is_file()
