"""The command line's options land on Hypercorn's ``Config`` as Hypercorn's own would."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from trio_background._cli import _config, _parser  # pyright: ignore[reportPrivateUsage]


def config_for(*argv: str) -> object:
    return _config(_parser().parse_args(["tests.cli_app:app", *argv]))


def test_hypercorn_options_are_applied_to_its_config() -> None:
    config = config_for(
        "-b", "127.0.0.1:0", "--bind", "unix:/tmp/x.sock", "--insecure-bind", "fd://3",
        "--certfile", "c.pem", "--keyfile", "k.pem", "--root-path", "/api",
        "--keep-alive", "7.5", "--max-requests", "10", "--max-requests-jitter", "3",
        "--verify-mode", "CERT_REQUIRED", "--server-name", "a", "--server-name", "b",
        "--access-log", "--log-level", "WARNING", "-w", "3", "-k", "trio",
    )  # fmt: skip
    expected = {
        "bind": ["127.0.0.1:0", "unix:/tmp/x.sock"],
        "insecure_bind": ["fd://3"],
        "certfile": "c.pem",
        "keyfile": "k.pem",
        "root_path": "/api",
        "keep_alive_timeout": 7.5,
        "max_requests": 10,
        "max_requests_jitter": 3,
        "verify_mode": ssl.VerifyMode.CERT_REQUIRED,
        "server_names": ["a", "b"],
        "accesslog": "-",
        "loglevel": "INFO",  # Hypercorn's own: its "Running on" line stays
        "workers": 3,
        "worker_class": "trio",
    }
    assert {name: getattr(config, name) for name in expected} == expected


def test_the_command_line_wins_over_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "hypercorn.toml"
    path.write_text('bind = ["0.0.0.0:9000"]\nroot_path = "/file"\nworkers = 2\n')
    config = config_for("--config", str(path), "--root-path", "/flag")
    assert (config.bind, config.root_path, config.workers) == (["0.0.0.0:9000"], "/flag", 2)  # type: ignore[attr-defined]


def test_a_python_config_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.py"
    path.write_text("keep_alive_timeout = 11\n")
    assert config_for("--config", f"file:{path}").keep_alive_timeout == 11  # type: ignore[attr-defined]


def test_a_config_file_with_a_bad_worker_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hypercorn.toml"
    path.write_text('workers = "two"\n')
    with pytest.raises(SystemExit) as exited:
        config_for("--config", str(path))
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "python -m trio_background: error: workers must be a number of processes >= 1, got 'two'\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bind", "fd://x"], "expected fd://NUMBER, got 'fd://x'"),
        (["--verify-mode", "SOMETIMES"], "expected one of CERT_NONE, CERT_OPTIONAL, "
            "CERT_REQUIRED, got 'SOMETIMES'"),
    ],
)  # fmt: skip
def test_option_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config_for(*argv)
    assert message in capsys.readouterr().err


def test_help_groups_hypercorns_options_and_ours(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    text = capsys.readouterr().out
    ours, _, theirs = text.partition("Hypercorn options:")
    assert "trio-background options:" in ours

    def defines(flag: str, group: str) -> bool:
        return re.search(rf"^  (-\w \S+, )?{flag}\b", group, re.MULTILINE) is not None

    for flag in ("--mode", "--drain-timeout", "--shutdown-delay", "--report-json", "--factory",
                 "--backend"):  # fmt: skip
        assert defines(flag, ours)
        assert not defines(flag, theirs)
    for flag in ("--config", "--bind", "--workers", "--certfile", "--keyfile", "--root-path",
                 "--keep-alive", "--graceful-timeout", "--max-requests"):  # fmt: skip
        assert defines(flag, theirs)
