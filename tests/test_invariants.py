"""The report's invariant under random scenarios (memory over a long life: bench/memory.py)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_background import BackgroundTasksMiddleware, TaskState

from .test_shutdown import run_scenario

task_kinds = st.tuples(
    st.sampled_from(["async", "sync", "fail", "afail"]),
    st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0, 3600.0]),
)
scenarios = st.lists(st.lists(task_kinds, max_size=6), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=scenarios,
    shutdown_at=st.sampled_from([0.0, 0.5, 2.0, 5.0, 20.0]),
    mode=st.sampled_from(["drain", "cancel"]),
    drain_timeout=st.sampled_from([0.0, 1.0, 4.0, 30.0]),
)
def test_every_task_is_accounted_for_exactly_once(
    requests: list[list[tuple[str, float]]], shutdown_at: float, mode: str, drain_timeout: float
) -> None:
    async def main() -> None:
        report, batches = await run_scenario(
            requests, shutdown_at=shutdown_at, mode=mode, drain_timeout=drain_timeout
        )
        added = sum(len(b.tasks) for b in batches)
        assert report.total == added == sum(len(r) for r in requests)
        by_state = {s: sum(t.state is s for b in batches for t in b.tasks) for s in TaskState}
        assert by_state[TaskState.PENDING] == by_state[TaskState.RUNNING] == 0
        for state in ("completed", "failed", "cancelled", "skipped", "abandoned"):
            assert report.count(state) == by_state[TaskState(state)]
            records = report.records(state)
            assert len(records) == report.count(state)  # keep_records is large here
            assert [(r.batch, r.index) for r in records] == sorted(
                (r.batch, r.index) for r in records
            )
        states = ("completed", "failed", "cancelled", "skipped", "abandoned")
        records = [r for s in states for r in report.records(s)]
        assert len({r.id for r in records}) == added
        # No task runs past the deadline; skipped ones never started.
        assert all(r.started_at is None for r in report.skipped)
        if report.deadline is not None:
            assert all(r.ended_at <= report.deadline for r in records if r.started_at is not None)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_sending_after_the_app_returned_is_an_error() -> None:
    kept: list[Any] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        kept.append(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    await BackgroundTasksMiddleware(app)({"type": "http", "path": "/"}, receive, send)
    with pytest.raises(
        RuntimeError,
        match=r"^the app sent 'http.response.body' after its call returned: keep a request's",
    ):
        await kept[0]({"type": "http.response.body", "body": b""})
