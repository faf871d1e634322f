"""DESIGN.md "Adding a task": input is checked at once, with messages that teach the fix."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Iterator

import pytest

from trio_background import BackgroundTask, BackgroundTasks, TaskState


async def send_email(to: str, subject: str = "hi") -> None:
    del to, subject


def write_log(line: str) -> None:
    del line


async def agen() -> AsyncIterator[int]:
    yield 1


def gen() -> Iterator[int]:
    yield 1


class AsyncCallable:
    async def __call__(self, x: int) -> None:
        del x


class SyncCallable:
    def __call__(self, x: int) -> None:
        del x


def test_add_task_returns_the_task_and_keeps_order() -> None:
    tasks = BackgroundTasks()
    first = tasks.add_task(send_email, "a@example.com", subject="s")
    second = tasks.add_task(write_log, "line")
    assert tasks.tasks == [first, second]
    assert first.func is send_email
    assert first.args == ("a@example.com",)
    assert first.kwargs == {"subject": "s"}
    assert first.name == "send_email"
    assert first.state is TaskState.PENDING
    assert first.error is None


def test_constructor_takes_tasks() -> None:
    task = BackgroundTask(write_log, "x")
    tasks = BackgroundTasks([task])
    assert tasks.tasks == [task]
    assert BackgroundTasks().tasks == []


def test_constructor_rejects_non_tasks() -> None:
    with pytest.raises(
        TypeError,
        match=r"^BackgroundTasks\(tasks=\.\.\.\) takes BackgroundTask objects, got function; ",
    ):
        BackgroundTasks([write_log])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("func", "is_async", "name"),
    [
        (send_email, True, "send_email"),
        (write_log, False, "write_log"),
        (functools.partial(send_email, "a"), True, "send_email"),
        (functools.partial(functools.partial(send_email), "a"), True, "send_email"),
        (functools.partial(write_log, "a"), False, "write_log"),
        (AsyncCallable(), True, "AsyncCallable"),
        (SyncCallable(), False, "SyncCallable"),
        (print, False, "print"),
        (SyncCallable, False, "SyncCallable"),
    ],
)
def test_async_detection(func: object, is_async: bool, name: str) -> None:
    task = BackgroundTasks().add_task(func)  # type: ignore[arg-type]
    assert task.is_async is is_async
    assert task.name == name


def test_coroutine_object_is_refused_and_closed() -> None:
    coro = send_email("a@example.com")
    with pytest.raises(
        TypeError,
        match=r"^"
        + re.escape(
            "add_task() got a coroutine object (send_email(...)), which would never run; "
            "pass the function and its arguments: add_task(send_email, arg, ...) instead of "
            "add_task(send_email(arg, ...))"
        )
        + r"$",
    ):
        BackgroundTasks().add_task(coro)  # type: ignore[arg-type]
    # Closed: no "never awaited" RuntimeWarning follows (filterwarnings=error
    # would turn it into a failure at garbage collection).
    assert coro.cr_frame is None


def test_not_callable_is_refused() -> None:
    with pytest.raises(
        TypeError,
        match=r"^"
        + re.escape(
            "add_task() needs a function to call, got str 'send'; "
            "pass the function and its arguments: add_task(func, arg, ...)"
        )
        + r"$",
    ):
        BackgroundTasks().add_task("send")  # type: ignore[arg-type]


def test_awaitable_non_coroutine_is_refused() -> None:
    class Waitable:
        def __await__(self) -> Iterator[None]:
            yield

    with pytest.raises(
        TypeError, match=r"^add_task\(\) got an awaitable .*Waitable object, not a function; "
    ):
        BackgroundTasks().add_task(Waitable())  # type: ignore[arg-type]


def test_async_generator_function_is_refused() -> None:
    with pytest.raises(
        TypeError,
        match=r"^add_task\(\) got an async generator function \(agen\); .*async for _ in agen\(\)",
    ):
        BackgroundTasks().add_task(agen)


def test_generator_function_is_refused() -> None:
    with pytest.raises(
        TypeError, match=r"^add_task\(\) got a generator function \(gen\); .*for _ in gen\(\)"
    ):
        BackgroundTasks().add_task(gen)


def test_partial_of_generator_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^add_task\(\) got a generator function \(gen\)"):
        BackgroundTasks().add_task(functools.partial(gen))


def test_nothing_is_added_on_error() -> None:
    tasks = BackgroundTasks()
    with pytest.raises(TypeError):
        tasks.add_task(gen)
    assert tasks.tasks == []


async def test_await_task_runs_it_and_reraises() -> None:
    seen: list[str] = []

    async def ok(x: str) -> None:
        seen.append(x)

    def boom() -> None:
        raise ValueError("nope")

    task = BackgroundTask(ok, "a")
    await task()
    assert seen == ["a"]
    assert task.state is TaskState.COMPLETED

    bad = BackgroundTask(boom)
    with pytest.raises(ValueError, match=r"^nope$"):
        await bad()
    assert bad.state is TaskState.FAILED
    assert isinstance(bad.error, ValueError)

    with pytest.raises(
        RuntimeError, match=r"^background task .*ok already ran \(state: completed\); a task runs"
    ):
        await task()


async def test_await_tasks_runs_in_order_and_stops_at_first_error() -> None:
    seen: list[str] = []

    async def a() -> None:
        seen.append("a")

    def b() -> None:
        seen.append("b")
        raise KeyError("b")

    def c() -> None:
        seen.append("c")

    tasks = BackgroundTasks()
    ta, tb, tc = tasks.add_task(a), tasks.add_task(b), tasks.add_task(c)
    with pytest.raises(KeyError):
        await tasks()
    assert seen == ["a", "b"]
    assert (ta.state, tb.state, tc.state) == (
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.SKIPPED,
    )
    assert tc.reason == "an earlier task of the batch raised"
    with pytest.raises(RuntimeError, match=r"^cannot add .*c to this batch: it has already run, "):
        tasks.add_task(c)
