"""The promise, tested with a model: what users and servers do, in any order.

A Hypothesis state machine whose rules are the things that happen to a
server running this library: requests open; handlers ``add_task``,
``start_soon`` and ``add_cleanup`` tasks that complete, fail (also with an
exception whose ``str()`` raises, with ``SystemExit`` and friends, with a
group), sleep, swallow the cancellation, add tasks to their own batch, run
in threads and add tasks from there; websocket connections with batches
of their own; the app answers, raises before its response, awaits a batch
as Starlette's ``background=`` does after it, or streams until the client
leaves; the app cancels a task
through its handle; ``await tasks()`` runs outside any request; time passes;
shutdown begins in either mode, a second signal comes, the server cuts the
requests still in flight, a test closes the supervisor with requests still
in their handlers.

After every step it checks the invariants of shared/DESIGN.md:

- every task is accounted for exactly once: the counts equal the final
  states of the tasks, and the kept records (all of them, here) name each
  ended task once;
- no task starts after the deadline (each task checks it as it starts);
- nothing a task does reaches the server: a request task ends with nothing
  but what the app itself raised;
- and at the end, once the server has stopped, nothing is left pending and
  the report is final only when every batch has ended.

The trio run lives in a thread of its own under a ``MockClock`` that moves
only when the model says so; each rule is sent to it and returns once every
trio task is blocked again (and every worker thread of a sync task has
returned), so each step is deterministic.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

import trio_background
from trio_background import (
    BackgroundTask,
    BackgroundTasks,
    BackgroundTasksMiddleware,
    TaskState,
    from_scope,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

Scope = MutableMapping[str, Any]

ASYNC_KINDS = ["ok", "sleep", "fail", "bad_str", "system_exit", "interrupt", "group", "swallow"]
SYNC_KINDS = ["sync_ok", "sync_fail", "sync_adds"]
POLICY_KINDS = ["flaky", "timed", "limited", "keyed"]
KINDS = [*ASYNC_KINDS, "adds", *SYNC_KINDS, *POLICY_KINDS]
HOW = ["add_task", "start_soon", "add_cleanup"]


# Functions with policies (module-level: a policy belongs to one function).
def _started(world: World) -> None:
    if world.supervisor.time_until_deadline() <= 0:
        world.violations.append("an attempt started at or after the deadline")


@trio_background.task(retries=2, backoff=1, retry_on=ValueError)
async def flaky(world: World, failures: list[int]) -> None:
    _started(world)
    if failures[0] < 2:
        failures[0] += 1
        raise ValueError(f"failure {failures[0]}")


@trio_background.task(timeout=2)
async def timed(world: World) -> None:
    _started(world)
    await trio.sleep(5)  # virtual time (the model's MockClock)


@trio_background.task(limit=1)
async def limited(world: World) -> None:
    _started(world)
    world.limited_running += 1
    try:
        if world.limited_running > 1:
            world.violations.append("two tasks ran beyond their limit of 1")
        await trio.sleep(2)  # virtual time (the model's MockClock)
    finally:
        world.limited_running -= 1


@trio_background.task(key="model-key")
async def keyed(world: World) -> None:
    _started(world)
    await trio.sleep(3)  # virtual time (the model's MockClock)


POLICIES: dict[str, Callable[..., Any]] = {
    "flaky": flaky,
    "timed": timed,
    "limited": limited,
    "keyed": keyed,
}


class AppError(Exception):
    """What the app raises before its response (the model's own exception)."""


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this exception raises")


class Request:
    def __init__(self, number: int, websocket: bool) -> None:
        self.number = number
        self.websocket = websocket
        self.commands, self.inbox = trio.open_memory_channel[Callable[..., Any]](100)
        self.scope_cancel = trio.CancelScope()
        self.client_left = trio.Event()
        self.raised: BaseException | None = None
        self.done = False
        self.expect_raise = False
        self.batch: BackgroundTasks | None = None


class World:
    """Everything inside the trio run: the app, the middleware, the requests, the tasks."""

    def __init__(self, on_error: str) -> None:
        self.middleware = BackgroundTasksMiddleware(
            self.app,
            on_error=on_error,  # type: ignore[arg-type]
            keep_records=100_000,
            drain_timeout=30,
        )
        self.supervisor = self.middleware.supervisor
        self.requests: dict[int, Request] = {}
        self.tasks: list[BackgroundTask] = []  # supervised tasks
        self.standalone: list[BackgroundTask] = []
        self.standalone_runs: list[BackgroundTasks] = []
        self.violations: list[str] = []
        self.threads = 0  # sync task bodies running in worker threads
        self.threads_lock = threading.Lock()
        self.nursery: trio.Nursery | None = None
        self.closed = False
        self.limited_running = 0

    # -- the app: a raw ASGI app that does what the model sends it ------------

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        request = self.requests[scope["model.request"]]
        request.batch = from_scope(scope)
        async for command in request.inbox:
            if await command(request, receive, send):
                return

    async def serve(self, request: Request) -> None:
        """What Hypercorn does for one request (or websocket): call the app, keep what it raises."""
        kind = "websocket" if request.websocket else "http"
        sent_first = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_first
            if not sent_first:
                sent_first = True
                if request.websocket:
                    return {"type": "websocket.connect"}
                return {"type": "http.request", "body": b"", "more_body": False}
            await request.client_left.wait()
            return {"type": f"{kind}.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await trio.lowlevel.checkpoint()

        scope: Scope = {
            "type": kind,
            "asgi": {"version": "3.0", "spec_version": "2.1"},
            "method": "POST",
            "path": f"/r{request.number}",
            "headers": [],
            "model.request": request.number,
        }
        try:
            with request.scope_cancel:
                await self.middleware(scope, receive, send)
        except AppError:
            if not request.expect_raise:
                self.violations.append(f"request {request.number}: AppError it did not raise")
        except BaseException as exc:
            self.violations.append(f"request {request.number}: {type(exc).__name__} escaped")
        finally:
            request.done = True

    # -- tasks ---------------------------------------------------------------

    def make(self, kind: str, batch_of: Callable[[], BackgroundTasks | None]) -> Callable[..., Any]:
        world = self
        supervised = batch_of() not in self.standalone_runs

        def check_deadline(name: str) -> None:
            if supervised and world.supervisor.time_until_deadline() <= 0:
                world.violations.append(f"{name} started at or after the deadline")

        if kind in ("ok", "sleep", "fail", "adds", "swallow") or kind in ASYNC_KINDS:

            async def task() -> None:
                check_deadline(kind)
                if kind == "ok":
                    await trio.lowlevel.checkpoint()
                elif kind == "sleep":
                    await trio.sleep(10)  # virtual time (the model's MockClock)
                elif kind == "fail":
                    await trio.sleep(1)  # virtual time (the model's MockClock)
                    raise ValueError("task failed")
                elif kind == "bad_str":
                    raise BadStr
                elif kind == "system_exit":
                    raise SystemExit(3)
                elif kind == "interrupt":
                    raise KeyboardInterrupt
                elif kind == "group":
                    raise ExceptionGroup("several", [ValueError("a"), KeyError("b")])
                elif kind == "swallow":
                    try:
                        await trio.sleep(20)  # virtual time (the model's MockClock)
                    except trio.Cancelled:
                        return
                elif kind == "adds":
                    batch = batch_of()
                    assert batch is not None
                    world.add_to(batch, "ok", "add_task", batch_of)

            task.__qualname__ = f"model_{kind}"
            return task

        def sync_task() -> None:
            with world.threads_lock:
                world.threads += 1
            try:
                if kind == "sync_fail":
                    raise OSError("disk full")
                if kind == "sync_adds":
                    batch = batch_of()
                    assert batch is not None
                    try:
                        task = batch.add_task(world.make("sync_ok", batch_of))
                    except RuntimeError as exc:
                        if "would never run" not in str(exc):
                            world.violations.append(f"add_task from a thread: {exc}")
                    else:
                        world.note(task, batch)
            finally:
                with world.threads_lock:
                    world.threads -= 1

        sync_task.__qualname__ = f"model_{kind}"
        return sync_task

    def note(self, task: BackgroundTask, batch: BackgroundTasks | None) -> None:
        known = self.standalone if batch in self.standalone_runs else self.tasks
        if not any(task is other for other in known):  # a key gives back a known task
            known.append(task)

    def add_to(
        self,
        batch: BackgroundTasks,
        kind: str,
        how: str,
        batch_of: Callable[[], BackgroundTasks | None],
    ) -> None:
        try:
            if kind in POLICIES:
                extra: tuple[Any, ...] = ([0],) if kind == "flaky" else ()
                task = getattr(batch, how)(POLICIES[kind], self, *extra)
            else:
                task = getattr(batch, how)(self.make(kind, batch_of))
        except RuntimeError as exc:
            if "would never run" not in str(exc):
                self.violations.append(f"{how}: {exc}")
            return
        self.note(task, batch)

    # -- stepping ------------------------------------------------------------

    async def settle(self) -> None:
        """Return once every trio task is blocked and no sync task's thread runs."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            with self.threads_lock:
                busy = self.threads
            standalone = trio.to_thread.current_default_thread_limiter().borrowed_tokens
            if not busy and not self.supervisor.limiter.borrowed_tokens and not standalone:
                return
            await trio.lowlevel.checkpoint()  # a thread is finishing: let trio hear of it


class ModelMachine(RuleBasedStateMachine):
    requests = Bundle("requests")
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.clock = trio.testing.MockClock()
        self.token: trio.lowlevel.TrioToken | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.next_request = 0
        self.shut_down = False
        self.run_error: BaseException | None = None

    # -- the trio run in its thread ----------------------------------------------

    def start(self, on_error: str) -> None:
        ready = threading.Event()
        stopped: list[trio.Event] = []

        async def main() -> None:
            self.world = World(on_error)
            self.token = trio.lowlevel.current_trio_token()
            self.supervisor_stop = trio.Event()
            stopped.append(self.supervisor_stop)
            async with trio.open_nursery() as nursery:
                self.world.nursery = nursery
                self.world.supervisor.start(nursery)  # app-level tasks run here
                ready.set()
                await self.supervisor_stop.wait()
                nursery.cancel_scope.cancel()

        def run() -> None:
            try:
                trio.run(main, clock=self.clock)
            except BaseException as exc:
                self.run_error = exc
            ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()
        if self.run_error is not None:
            raise self.run_error

    def step(self, action: Callable[[World], Any]) -> Any:
        """Do ``action`` in the trio run (sync or async), then let everything settle."""
        world = self.world
        assert world is not None

        async def run() -> Any:
            result = action(world)
            if hasattr(result, "__await__"):
                result = await result
            await world.settle()
            return result

        return trio.from_thread.run(run, trio_token=self.token)

    def peek(self, read: Callable[[World], Any]) -> Any:
        """Read the world in the trio run (idle between steps: nothing moves)."""
        return trio.from_thread.run_sync(read, self.world, trio_token=self.token)

    # -- rules ---------------------------------------------------------------

    @initialize(on_error=st.sampled_from(["continue", "stop"]))
    def begin(self, on_error: str) -> None:
        self.start(on_error)

    @precondition(lambda self: self.next_request < 12)
    @rule(target=requests, websocket=st.booleans())
    def open_request(self, websocket: bool) -> int:
        self.next_request += 1
        number = self.next_request

        def go(world: World) -> None:
            request = world.requests[number] = Request(number, websocket)
            assert world.nursery is not None
            world.nursery.start_soon(world.serve, request)

        self.step(go)
        return number

    @rule(target=handles, number=requests, kind=st.sampled_from(KINDS), how=st.sampled_from(HOW))
    def handler_adds(self, number: int, kind: str, how: str) -> int:
        def go(world: World) -> None:
            request = world.requests[number]
            if request.done:
                return

            async def add(request: Request, receive: Any, send: Any) -> bool:
                batch = request.batch
                assert batch is not None
                world.add_to(batch, kind, how, lambda: batch)
                return False

            request.commands.send_nowait(add)

        self.step(go)
        return len(self.world.tasks) - 1 if self.world is not None else -1

    @rule(
        number=consumes(requests),
        ending=st.sampled_from(["respond", "raise", "stream_leave", "respond_with_background"]),
    )
    def app_ends(self, number: int, ending: str) -> None:
        def go(world: World) -> None:
            request = world.requests[number]
            if request.done:
                return

            async def end(request: Request, receive: Any, send: Any) -> bool:
                if ending == "raise":
                    request.expect_raise = True
                    raise AppError("before the response")
                if request.websocket:  # accepted, then closed by the app or the client
                    await send({"type": "websocket.accept"})
                    if ending == "stream_leave":
                        request.client_left.set()
                        while (await receive())["type"] != "websocket.disconnect":
                            pass
                    else:
                        await send({"type": "websocket.close", "code": 1000})
                    return True
                await send({"type": "http.response.start", "status": 200, "headers": []})
                if ending == "respond":
                    await send({"type": "http.response.body", "body": b"ok"})
                    return True
                if ending == "respond_with_background":
                    # Starlette's Response(background=...): a batch of this
                    # library's tasks awaited after the response joins the
                    # request's supervised batch.
                    await send({"type": "http.response.body", "body": b"ok"})
                    task = BackgroundTask(world.make("ok", lambda: request.batch))
                    world.tasks.append(task)
                    await BackgroundTasks([task])()
                    return True
                await send(
                    {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True}
                )
                request.client_left.set()
                while (await receive())["type"] != "http.disconnect":
                    pass
                return True

            request.commands.send_nowait(end)

        self.step(go)

    @rule(index=handles)
    def app_cancels_a_task(self, index: int) -> None:
        def go(world: World) -> None:
            if 0 <= index < len(world.tasks):
                world.tasks[index].cancel()

        self.step(go)

    @rule(kinds=st.lists(st.sampled_from(["ok", "fail", "adds", "sync_ok", "sleep"]), max_size=4))
    def await_tasks_outside_a_request(self, kinds: list[str]) -> None:
        def go(world: World) -> None:
            batch = BackgroundTasks()
            world.standalone_runs.append(batch)
            for kind in kinds:
                world.add_to(batch, kind, "add_task", lambda: batch)

            async def run() -> None:
                try:
                    await batch()
                except (ValueError, trio.Cancelled):
                    raise
                except BaseException as exc:
                    world.violations.append(f"await tasks() raised {type(exc).__name__}")

            assert world.nursery is not None
            world.nursery.start_soon(_ignoring(ValueError, run))

        self.step(go)

    @rule(kind=st.sampled_from(["ok", "sleep", "fail", "sync_ok", *POLICY_KINDS]))
    def an_app_level_task_starts(self, kind: str) -> None:
        def go(world: World) -> None:
            try:
                if kind in POLICIES:
                    extra: tuple[Any, ...] = ([0],) if kind == "flaky" else ()
                    task = world.supervisor.start_soon(POLICIES[kind], world, *extra)
                else:
                    task = world.supervisor.start_soon(world.make(kind, lambda: None))
            except RuntimeError as exc:
                if "the supervisor has closed" not in str(exc):
                    world.violations.append(f"start_soon: {exc}")
                return
            world.note(task, None)

        self.step(go)

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 11.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        self.step(lambda world: self.clock.jump(seconds))

    @rule(mode=st.sampled_from(["drain", "cancel"]), drain=st.sampled_from([0.0, 1.0, 10.0]))
    def shutdown_begins(self, mode: str, drain: float) -> None:
        self.shut_down = True
        self.step(
            lambda world: world.supervisor.begin_shutdown(
                mode=mode,  # type: ignore[arg-type]
                drain_timeout=drain,
                cause="signal",
            )
        )

    @precondition(lambda self: self.shut_down)
    @rule()
    def second_signal(self) -> None:
        self.step(lambda world: world.supervisor.begin_shutdown(mode="cancel"))

    @precondition(lambda self: self.shut_down)
    @rule()
    def server_cuts_requests_in_flight(self) -> None:
        def go(world: World) -> None:
            for request in world.requests.values():
                request.scope_cancel.cancel()

        self.step(go)

    @precondition(lambda self: self.shut_down)
    @rule()
    def a_test_closes_the_supervisor(self) -> None:
        def go(world: World) -> None:
            world.closed = True
            world.supervisor.close()

        self.step(go)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def nothing_escaped_and_nothing_started_late(self) -> None:
        if self.world is not None:
            assert self.world.violations == []

    @invariant()
    def every_ended_task_is_counted_once(self) -> None:
        world = self.world
        if world is None:
            return
        snapshot = self.peek(lambda world: world.supervisor.snapshot())
        ended = collections.Counter(t.state.value for t in world.tasks if t.state.is_final)
        counts = {state: n for state, n in snapshot.counts.items() if n}
        assert counts == dict(ended)
        ids = [record.id for record in snapshot.finished]
        assert len(ids) == len(set(ids)) == sum(ended.values())
        live = {record.id for record in snapshot.active}
        assert live == {t.id for t in world.tasks if not t.state.is_final}

    def teardown(self) -> None:
        world = self.world
        if world is None:
            return
        try:
            # The server stops: cancel mode, requests cut, time runs on.
            self.step(lambda world: world.supervisor.begin_shutdown(mode="cancel"))
            for request_number in list(world.requests):
                self.step(lambda world, n=request_number: world.requests[n].scope_cancel.cancel())
            # Time runs on until nothing is left (await tasks() outside a
            # request is no server's: it runs to its end).
            for _ in range(50):
                if all(t.state.is_final for t in [*world.tasks, *world.standalone]):
                    break
                self.step(lambda world: self.clock.jump(60))

            async def finish(world: World) -> Any:
                await world.supervisor.wait_idle()
                return world.supervisor.close()

            report = self.step(finish)
            assert world.violations == []
            pending = [t for t in [*world.tasks, *world.standalone] if not t.state.is_final]
            assert pending == []
            final = collections.Counter(t.state.value for t in world.tasks)
            counts = self.step(lambda world: world.supervisor.statistics().counts)
            assert {s: n for s, n in counts.items() if n} == dict(final)
            if not world.closed:
                assert report.total == len(world.tasks)
                assert all(r.started_at is None for r in report.skipped)
                assert (
                    report.count(TaskState.SKIPPED)
                    + report.count("completed")
                    + report.count("failed")
                    + report.count("cancelled")
                    + report.count("abandoned")
                    == report.total
                )
        finally:
            if self.token is not None:
                trio.from_thread.run_sync(self.supervisor_stop.set, trio_token=self.token)
            assert self.thread is not None
            self.thread.join(timeout=30)
            assert not self.thread.is_alive()
            if self.run_error is not None:
                raise self.run_error


def _ignoring(kind: type[BaseException], fn: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> None:
        try:
            await fn()
        except kind:
            pass

    return run


ModelMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "1000")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestModel = ModelMachine.TestCase
