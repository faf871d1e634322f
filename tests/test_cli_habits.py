"""Issue 25: the command line meets the habits users bring from Hypercorn and uvicorn.

Whole processes, as in test_cli.py: ``python -m trio_background`` and plain
``hypercorn`` with the config this package ships.
"""

from __future__ import annotations

import importlib.metadata
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from .processes import ROOT, Server, start, start_cli
from .test_cli import run_cli


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    version = importlib.metadata.version("trio-background")
    hypercorn = importlib.metadata.version("hypercorn")
    assert result.stdout.startswith(f"trio-background {version} (Hypercorn {hypercorn}, trio ")


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--port", "9000"], "error: there is no --port: give host and port together, as "
            "Hypercorn does: --bind 127.0.0.1:9000 (or --bind 0.0.0.0:9000 to listen on every "
            "interface)\n"),
        (["--host", "0.0.0.0"], "error: there is no --host: give host and port together, as "
            "Hypercorn does: --bind 0.0.0.0:8000\n"),
        (["--access-log", "tests.cli_app:app"], "error: argument --access-log: expected - "
            "(stdout) or a file PATH, got 'tests.cli_app:app', which looks like the app: give "
            "MODULE:APP first, or write --access-log - before it\n"),
    ],
)  # fmt: skip
def test_other_servers_options_name_the_one_to_use(args: list[str], hint: str) -> None:
    app = [] if "--access-log" in args else ["tests.cli_app:app"]
    result = run_cli(*app, *args)
    assert result.returncode == 2
    assert result.stderr.endswith(hint)
    assert "Traceback" not in result.stderr


async def get_health_and_stop(server: Server) -> None:
    url = await server.url()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 0, server.output


@pytest.mark.parametrize("flag", [["--access-log"], ["--access-log", "-"]])
async def test_access_log_goes_to_stdout(tmp_path: Path, flag: list[str]) -> None:
    stdout = tmp_path / "stdout"
    with stdout.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_background", "tests.cli_app:app", "--bind",
                "127.0.0.1:0", *flag],
            stdout=out, stderr=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        server = Server(process)
        await get_health_and_stop(server)
    assert '"GET /health 1.1" 200' in stdout.read_text()
    assert "GET /health" not in server.output


async def test_access_log_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    server = await start_cli("--access-log", str(path))
    await get_health_and_stop(server)
    assert '"GET /health 1.1" 200' in path.read_text()
    assert "GET /health" not in server.output


@pytest.mark.parametrize("shipped_config", [True, False])
async def test_plain_hypercorn_shows_the_report_with_the_shipped_config(
    shipped_config: bool,
) -> None:
    config = ["--config", "python:trio_background.hypercorn_config"] if shipped_config else [
        "--worker-class", "trio",
    ]  # fmt: skip
    server = await start("-m", "hypercorn", *config, "--bind", "127.0.0.1:0", "tests.cli_app:app")
    await get_health_and_stop(server)
    # Nothing was running and every task completed (there were none): both
    # lines are INFO, which only the shipped config shows.
    signal_line = (
        "[INFO] trio_background: Hypercorn is shutting this worker down: no background task "
        "unfinished; the report follows at lifespan shutdown"
    )
    report_line = (
        "[INFO] trio_background: background tasks (lifespan shutdown): 0 total: 0 completed, "
        "0 failed, 0 cancelled, 0 skipped, 0 abandoned"
    )
    assert (report_line in server.output) is shipped_config, server.output
    assert (signal_line in server.output) is shipped_config, server.output
    if shipped_config:
        assert server.output.index(signal_line) < server.output.index(report_line)


@pytest.mark.parametrize(
    ("command", "name", "stop"),
    [
        ("hypercorn", "Hypercorn", signal.SIGTERM),
        ("hypercorn", "Hypercorn", signal.SIGINT),
        ("anycorn", "anycorn", signal.SIGTERM),
    ],
)
async def test_plain_hypercorn_logs_a_line_at_the_signal(
    command: str, name: str, stop: signal.Signals
) -> None:
    # Hypercorn's parent process takes the signal; its worker is told by a
    # multiprocessing Event, and the app nothing until lifespan shutdown.
    server = await start(
        "-m", command, "--config", "python:trio_background.hypercorn_config",
        "--graceful-timeout", "1", "--bind", "127.0.0.1:0", "tests.cli_app:app",
    )  # fmt: skip
    url = await server.url()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/work")).status_code == 200
    # The short task has completed; the long one runs, the last one waits its turn.
    await server.wait_for("task long started")
    server.process.send_signal(stop)
    assert await server.finish() == 0, server.output
    signal_line = (
        f"[INFO] trio_background: {name} is shutting this worker down: 2 background tasks "
        f"unfinished (1 running) in 1 batch; what still runs is cut when {name}'s graceful "
        "timeout (1s) ends; the report follows at lifespan shutdown\n"
    )
    report_line = (
        "[WARNING] trio_background: background tasks (lifespan shutdown): 3 total: "
        "1 completed, 0 failed, 1 cancelled, 1 skipped, 0 abandoned; "
    )
    assert server.output.count(signal_line) == 1, server.output
    assert server.output.index(signal_line) < server.output.index(report_line), server.output


async def test_plain_hypercorn_with_two_workers_ends_a_draining_one_without_its_report() -> None:
    # Hypercorn 0.18 stops when its first worker exits, and terminates the
    # rest: the busy worker is killed in its graceful timeout, without a
    # report. The docs say so; if Hypercorn waits for every worker one day,
    # this fails, and the docs (shutdown.rst, faq.rst) need the news.
    server = await start(
        "-m", "hypercorn", "--config", "python:trio_background.hypercorn_config",
        "--workers", "2", "--bind", "127.0.0.1:0", "tests.cli_app:app",
    )  # fmt: skip
    url = await server.url()
    await server.wait_for("Running on", new=True)  # the second worker
    async with httpx.AsyncClient(base_url=url) as client:
        busy = (await client.get("/pid")).json()["pid"]  # and a task of an hour
    await server.wait_for("task long started")
    server.process.send_signal(signal.SIGTERM)
    assert await server.finish() == 0, server.output
    idle = re.search(
        r"\[(\d+)\] \[INFO\] trio_background: background tasks \(lifespan shutdown\): 0 total",
        server.output,
    )
    assert idle is not None, server.output
    assert int(idle[1]) != busy
    assert f"[{busy}] [WARNING] trio_background: background tasks" not in server.output


def test_make_demo_takes_bind() -> None:
    def demo_command(*variables: str) -> str:
        result = subprocess.run(
            ["make", "--no-print-directory", "--dry-run", "--always-make", "demo", *variables],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout.splitlines()[-1]

    assert demo_command().endswith(" -m trio_background examples.demo:app --bind "
        "127.0.0.1:8000 --drain-timeout 10")  # fmt: skip
    assert " --bind 0.0.0.0:9000 " in demo_command("BIND=0.0.0.0:9000")
