"""The public surface: names are fixed by DESIGN.md; extending is fine, renaming is not."""

from __future__ import annotations

import importlib
import sys
import typing

import pytest

import trio_background
import trio_background.fastapi
import trio_background.testing


def test_public_names() -> None:
    assert set(trio_background.__all__) == {
        "BackgroundTask",
        "BackgroundTasks",
        "BackgroundTasksMiddleware",
        "Progress",
        "ShutdownReport",
        "Snapshot",
        "Supervisor",
        "SupervisorStatistics",
        "TaskMonitor",
        "TaskRecord",
        "TaskState",
        "DurableBackend",
        "TaskObserver",
        "TaskPolicy",
        "current_supervisor",
        "from_scope",
        "health",
        "monitor",
        "report_progress",
        "serve",
        "supervisor_from_scope",
        "task",
    }
    for name in trio_background.__all__:
        obj = getattr(trio_background, name)
        assert obj.__module__.startswith("trio_background._"), name


def test_task_state_values() -> None:
    assert [s.value for s in trio_background.TaskState] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "skipped",
        "abandoned",
        "handed_off",
    ]
    assert trio_background.TaskState("skipped") is trio_background.TaskState.SKIPPED


def test_fastapi_dependency_is_annotated_batch() -> None:
    alias = trio_background.fastapi.BackgroundTasks
    assert typing.get_origin(alias) is typing.Annotated
    base, dependency = typing.get_args(alias)
    assert base is trio_background.BackgroundTasks
    assert dependency.dependency is trio_background.fastapi.get_background_tasks


def test_testing_names() -> None:
    assert set(trio_background.testing.__all__) == {
        "BackgroundClient",
        "LiveServer",
        "open_client",
        "open_live_server",
    }


def test_report_fields() -> None:
    report = trio_background.ShutdownReport()
    for state in ("completed", "failed", "cancelled", "skipped", "abandoned"):
        assert getattr(report, state) == ()
        assert report.count(state) == 0
    assert report.total == 0
    fields = set(trio_background.TaskRecord.__dataclass_fields__)
    assert {"name", "state", "error", "request", "started_at", "ended_at"} <= fields


def test_observability_modules() -> None:
    import trio_background.otel
    import trio_background.prometheus

    assert set(trio_background.prometheus.__all__) == {"MetricsApp", "TaskMetrics", "metrics_app"}
    assert set(trio_background.otel.__all__) == {"TaskTracer"}


@pytest.mark.parametrize(
    ("module", "needs", "extra"),
    [
        ("trio_background.prometheus", "prometheus_client", "prometheus"),
        ("trio_background.otel", "opentelemetry", "otel"),
        ("trio_background.fastapi", "fastapi", "fastapi"),
    ],
)
def test_a_missing_extra_names_its_install(
    module: str, needs: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, needs, None)  # what a missing package looks like
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'trio-background\[{extra}\]'$"):
        importlib.import_module(module)


def test_quart_names() -> None:
    import trio_background.quart

    assert set(trio_background.quart.__all__) == {"BackgroundTasksExtension", "background_tasks"}


def test_streaq_names() -> None:
    streaq = pytest.importorskip("trio_background.streaq", reason="streaQ needs Python 3.11+")
    assert streaq.__all__ == ["StreaqBackend"]
    assert streaq.StreaqBackend.__module__ == "trio_background.streaq._backend"
