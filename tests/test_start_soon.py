"""``start_soon``: tasks beside the ``add_task`` sequence, in the request's nursery.

Two ``start_soon`` tasks overlap in time while the sequence keeps its
order, and shutdown cuts all of them by one deadline, with every task in
the report. Time is trio's MockClock (autojump); ordering is shown with
events, never with sleeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from trio_background import BackgroundTasksMiddleware, TaskState, from_scope
from trio_background.testing import open_client

from .conftest import send_text

if TYPE_CHECKING:
    from collections.abc import Callable


def app_with(handler: Callable[[Any], None], **options: Any) -> BackgroundTasksMiddleware:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("HTTP only")
        handler(from_scope(scope))
        await send_text(send, "ok")

    return BackgroundTasksMiddleware(app, **options)


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


async def test_start_soon_tasks_overlap_while_the_sequence_keeps_its_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    started: list[str] = []
    both_started = trio.Event()

    async def beside(name: str) -> None:
        events.append(f"{name} start")
        started.append(name)
        if len(started) == 2:
            both_started.set()
        # Returns only once the other one has started too: if start_soon
        # tasks ran one after the other, this would wait forever (and the
        # MockClock would jump to fail_after's deadline).
        await both_started.wait()
        await trio.sleep(5)
        events.append(f"{name} end")

    async def step(name: str, seconds: float) -> None:
        events.append(f"{name} start")
        if name == "a1":
            await both_started.wait()  # the sequence runs while they do
        await trio.sleep(seconds)
        events.append(f"{name} end")

    def handler(tasks: Any) -> None:
        tasks.add_task(step, "a1", 3)
        tasks.start_soon(beside, "s1")
        tasks.add_task(step, "a2", 1)
        tasks.start_soon(beside, "s2")
        tasks.add_task(step, "a3", 0)

    with trio.fail_after(60):
        async with open_client(app_with(handler)) as client:
            response = await client.get("/")
            assert response.text == "ok"
            await client.wait_idle()
            report = await client.shutdown()

    sequence = [e for e in events if e.startswith("a")]
    assert sequence == ["a1 start", "a1 end", "a2 start", "a2 end", "a3 start", "a3 end"]
    # Both start_soon tasks started before either ended, and before a1 ended.
    assert events.index("s1 start") < events.index("s2 end")
    assert events.index("s2 start") < events.index("s1 end")
    assert max(events.index("s1 start"), events.index("s2 start")) < events.index("a1 end")
    # One batch: the three steps (3 + 1 + 0 s) ran beside the 5 s tasks.
    assert trio.current_time() == 5
    assert report.counts["completed"] == report.total == 5
    assert {r.batch for r in report.completed} == {report.completed[0].batch}


async def test_shutdown_cuts_the_sequence_and_the_start_soon_tasks_by_one_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = trio.Event()
    quick_done = trio.Event()

    async def long_step() -> None:
        running.set()
        await trio.sleep(3600)

    async def next_step() -> None:
        raise AssertionError("never starts: the deadline comes first")

    async def forever() -> None:
        await trio.sleep_forever()

    async def quick() -> None:
        await trio.sleep(1)
        quick_done.set()

    def handler(tasks: Any) -> None:
        tasks.add_task(long_step)
        tasks.add_task(next_step)
        tasks.start_soon(forever)
        tasks.start_soon(quick)

    async with open_client(app_with(handler, drain_timeout=30)) as client:
        await client.get("/")
        await running.wait()
        report = await client.shutdown()

    assert quick_done.is_set()
    assert report.mode == "drain"
    assert report.counts == {
        "completed": 1,
        "failed": 0,
        "cancelled": 2,
        "skipped": 1,
        "abandoned": 0,
        **({"handed_off": 0} if "handed_off" in report.counts else {}),
    }
    assert report.total == 4
    assert [short(r.name) for r in report.completed] == ["quick"]
    assert sorted(short(r.name) for r in report.cancelled) == ["forever", "long_step"]
    assert [short(r.name) for r in report.skipped] == ["next_step"]
    # One deadline for all of them.
    assert report.deadline is not None
    assert {r.ended_at for r in report.cancelled} == {report.deadline}
    assert report.skipped[0].state is TaskState.SKIPPED
    ids = [r.id for r in (*report.completed, *report.cancelled, *report.skipped)]
    assert len(set(ids)) == 4
