"""StreaqBackend against a real Redis: registering, handing off, status, results, failures."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    pytest.skip("streaQ (the durable backend) needs Python 3.11+", allow_module_level=True)

import trio
from streaq import TaskStatus

import trio_background
from tests.redis_fixture import RedisServer
from trio_background import BackgroundTask
from trio_background.streaq import StreaqBackend
from trio_background.streaq._backend import make_streaq_worker
from trio_background.streaq._worker import run_worker


async def double(x: int) -> int:
    return 2 * x


def triple(x: int) -> int:
    return 3 * x


def not_registered() -> None: ...


def make_backend(url: str, queue: str) -> StreaqBackend:
    backend = StreaqBackend(url, queue_name=queue, idle_timeout=2.0, hand_off_timeout=5.0)
    backend.task(double)
    backend.task(name="tests.triple", max_tries=1)(triple)
    return backend


@pytest.fixture
async def backend(redis_server: RedisServer, queue_name: str) -> AsyncIterator[StreaqBackend]:
    async with make_backend(redis_server.url, queue_name) as backend:
        yield backend


async def queued(backend: StreaqBackend) -> int:
    """How many tasks wait in the backend's queue, as streaQ counts them."""
    client = make_streaq_worker(backend)
    async with client:
        return await client.queue_size()


# -- registering ----------------------------------------------------------


def test_registered_functions_stay_callable_and_are_known() -> None:
    backend = make_backend("redis://127.0.0.1:1/0", "q")
    assert backend.is_durable(double)
    assert backend.is_durable(triple)
    assert not backend.is_durable(not_registered)
    assert not backend.is_durable(print)
    assert triple(2) == 6
    assert [(d.name, d.is_async, d.max_tries) for d in backend.functions] == [
        (f"{__name__}.double", True, 3),
        ("tests.triple", False, 1),
    ]
    assert repr(backend) == "<StreaqBackend 'q' at 'redis://127.0.0.1:1/0', 2 functions>"


def test_decorator_returns_the_function_itself() -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0")

    @backend.task(name="same", timeout=10)
    async def same() -> None: ...

    assert backend.is_durable(same)
    assert backend.functions[0].timeout == 10


def test_a_name_is_registered_once() -> None:
    backend = make_backend("redis://127.0.0.1:1/0", "q")
    with pytest.raises(
        ValueError,
        match=r"^a durable function named 'tests\.triple' is already registered on "
        r"<StreaqBackend 'q' at 'redis://127\.0\.0\.1:1/0', 2 functions>; pass another name=$",
    ):
        backend.task(name="tests.triple")(not_registered)


def test_only_plain_module_level_functions() -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0")
    with pytest.raises(
        TypeError, match=r"^backend\.task registers a function defined with def or async def, "
    ):
        backend.task(print)

    def local() -> None: ...

    with pytest.raises(
        ValueError,
        match=r"^cannot register test_only_plain_module_level_functions\.<locals>\.local: a "
        r"worker finds a durable function by module and name, so define it at module level "
        r"\(or pass name=\)$",
    ):
        backend.task(local)

    def gen() -> object:
        yield 1

    with pytest.raises(TypeError, match=r"^backend\.task got a generator function"):
        backend.task(gen)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec("def main_func(): pass", namespace)
    with pytest.raises(
        ValueError, match=r"^cannot register main_func from __main__: a worker imports your "
    ):
        backend.task(namespace["main_func"])  # type: ignore[arg-type]


_SEND = r"test_what_streaq_cannot_honour_is_refused_at_decoration\.<locals>\.send"
_LIMIT_REFUSED = (
    r"^streaQ cannot honour limit= on {name}: streaQ bounds how many tasks one worker runs "
    r"\(--concurrency\), not how many runs of one function run at once across workers; drop "
    r"limit= \(or leave the function out of the backend: in process, limit= holds\)$"
)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": 5}, _LIMIT_REFUSED.format(name=_SEND)),
        (
            {"key": lambda user: f"welcome:{user}"},
            rf"^streaQ cannot honour key= on {_SEND}: streaQ's unique= lets one run of a function "
            r"at a time and fails the others, it does not merge two hand-offs of one key; drop "
            r"key= and deduplicate before add_task \(or leave the function out of the backend: "
            r"in process, key= holds\)$",
        ),
    ],
)
def test_what_streaq_cannot_honour_is_refused_at_decoration(
    options: dict[str, object], message: str
) -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0")

    async def send(user: str) -> None: ...

    with pytest.raises(TypeError, match=message):
        backend.task(name="send", retries=1, **options)(send)  # type: ignore[call-overload]
    assert not backend.is_durable(send)
    assert backend.functions == ()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"retries": -1}, ValueError, r"^task\(retries=\.\.\.\) must be an int >= 0, got -1$"),
        (
            {"timeout": 0},
            ValueError,
            r"^task\(timeout=\.\.\.\) must be a finite number of seconds > 0, got 0$",
        ),
        ({"retry_on": int}, TypeError, r"^task\(retry_on=\.\.\.\) takes exception types, got "),
        ({"max_backoff": 0.5}, ValueError, r"^task\(max_backoff=\.\.\.\) must be >= backoff "),
    ],
)
def test_policy_values_are_checked_as_trio_background_task_checks_them(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0")
    with pytest.raises(error, match=message):
        backend.task(name="f", **options)(not_registered)  # type: ignore[call-overload]
    # The same rules and words as the in-process decorator's.
    with pytest.raises(error, match=message):
        trio_background.task(**options)  # type: ignore[arg-type]


def test_a_policy_maps_onto_streaqs_tries_either_decorator_order() -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0", max_tries=4)

    @backend.task(name="given", retries=2, timeout=10)
    async def given() -> None: ...

    @backend.task(name="below")
    @trio_background.task(retries=1)
    async def below() -> None: ...

    @trio_background.task(retries=5, backoff=0)  # after registration: read by the worker
    @backend.task(name="above")
    async def above() -> None: ...

    @backend.task(name="plain")
    async def plain() -> None: ...

    registry = make_streaq_worker(backend).registry
    assert [registry[n].max_tries for n in ("given", "below", "above", "plain")] == [3, 2, 6, 4]
    # backend.task(...) gives the function the policy, as @trio_background.task does.
    assert isinstance(given.__trio_background_policy__, trio_background.TaskPolicy)  # type: ignore[attr-defined]
    assert [d.timeout for d in backend.functions] == [10, None, None, None]


def test_a_refused_policy_put_on_after_registration_fails_the_worker_start() -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0")

    @trio_background.task(limit=2)
    @backend.task(name="late")
    async def late() -> None: ...

    with pytest.raises(
        TypeError,
        match=_LIMIT_REFUSED.format(
            name=r"test_a_refused_policy_put_on_after_registration_fails_the_worker_start\."
            r"<locals>\.late"
        ),
    ):
        make_streaq_worker(backend)


def test_a_policy_is_given_in_one_place() -> None:
    backend = StreaqBackend("redis://127.0.0.1:1/0")

    async def both() -> None: ...

    with pytest.raises(
        TypeError,
        match=r"^backend\.task got max_tries= for "
        r"test_a_policy_is_given_in_one_place\.<locals>\.both, whose policy has retries=: give "
        r"retries= \(a worker then allows retries \+ 1 tries\) or max_tries=, not both$",
    ):
        backend.task(name="both", retries=2, max_tries=5)(both)
    trio_background.task(retries=1)(both)
    with pytest.raises(
        TypeError,
        match=r"^backend\.task got retries= for test_a_policy_is_given_in_one_place\.<locals>"
        r"\.both, which already has another policy from @trio_background\.task\(\.\.\.\): "
        r"give the options in one place$",
    ):
        backend.task(name="both", retries=2)(both)
    # The same options again (the same function on a second backend) are that policy.
    backend.task(name="both", retries=1)(both)
    assert backend.is_durable(both)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"redis_url": "127.0.0.1:6379"}, r"^redis_url must be a Redis URL such as "),
        ({"queue_name": ""}, r"^queue_name must be a non-empty name without ':', got ''$"),
        ({"queue_name": "a:b"}, r"^queue_name must be a non-empty name without ':'"),
        ({"concurrency": 0}, r"^concurrency must be a whole number >= 1, got 0$"),
        ({"idle_timeout": 0}, r"^idle_timeout must be a positive number of seconds, got 0$"),
        ({"hand_off_timeout": True}, r"^hand_off_timeout must be a positive number"),
        ({"max_tries": 0}, r"^max_tries must be a whole number >= 1 or None, got 0$"),
    ],
)
def test_bad_options_say_what_to_pass(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"redis_url": "redis://127.0.0.1:1/0", **kwargs}
    with pytest.raises(ValueError, match=message):
        StreaqBackend(**options)  # type: ignore[arg-type]


# -- the connection --------------------------------------------------------


async def test_a_closed_backend_says_how_to_open_it() -> None:
    backend = make_backend("redis://127.0.0.1:1/0", "q")
    with pytest.raises(RuntimeError, match=r"^<StreaqBackend 'q' .*> is not open: use "):
        await backend.hand_off([BackgroundTask(double, 1)])
    await backend.aclose()  # closing what is not open is fine


async def test_open_fails_when_redis_is_unreachable(own_redis: RedisServer) -> None:
    own_redis.stop()
    backend = make_backend(own_redis.url, "q")
    with pytest.raises(
        ConnectionError,
        match=rf"^cannot connect to Redis at {own_redis.url} for <StreaqBackend 'q' .*>: "
        r"Unable to establish a connection to 127\.0\.0\.1:\d+$",
    ):
        await backend.open()
    # and it can be opened later, once Redis is there
    own_redis.start()
    async with backend:
        assert await backend.status("nothing") is TaskStatus.NOT_FOUND


async def test_open_twice_is_an_error(backend: StreaqBackend) -> None:
    with pytest.raises(RuntimeError, match=r"^<StreaqBackend .*> is already open; aclose\(\) it"):
        await backend.open()


# -- handing off -----------------------------------------------------------


async def test_hand_off_stores_every_task_and_a_worker_runs_them(backend: StreaqBackend) -> None:
    tasks = [BackgroundTask(double, 21), BackgroundTask(triple, x=5)]
    ids = await backend.hand_off(tasks)
    assert len(ids) == 2
    assert len(set(ids)) == 2
    assert [await backend.status(i) for i in ids] == [TaskStatus.QUEUED, TaskStatus.QUEUED]
    assert await queued(backend) == 2
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, backend)
        with trio.fail_after(30):
            results = [await backend.result(i) for i in ids]
        nursery.cancel_scope.cancel()
    assert [r.result for r in results] == [42, 15]
    assert [r.fn_name for r in results] == [f"{__name__}.double", "tests.triple"]
    assert [await backend.status(i) for i in ids] == [TaskStatus.DONE, TaskStatus.DONE]
    assert await backend.hand_off([]) == []


async def test_only_registered_functions_are_handed_off(backend: StreaqBackend) -> None:
    with pytest.raises(
        ValueError,
        match=r"^not_registered is not registered on <StreaqBackend .*>: register it with "
        r"@backend\.task$",
    ):
        await backend.hand_off([BackgroundTask(double, 1), BackgroundTask(not_registered)])
    assert await queued(backend) == 0


async def test_an_argument_that_cannot_be_stored_stores_nothing(backend: StreaqBackend) -> None:
    with pytest.raises(Exception, match=r"^Unable to serialize task"):
        await backend.hand_off([BackgroundTask(double, 1), BackgroundTask(double, lambda: 1)])
    assert await queued(backend) == 0


async def test_redis_down_fails_the_hand_off_and_stores_nothing(
    own_redis: RedisServer, queue_name: str
) -> None:
    async with make_backend(own_redis.url, queue_name) as backend:
        own_redis.stop()
        with pytest.raises(Exception, match=r"127\.0\.0\.1|onnection"):
            await backend.hand_off([BackgroundTask(double, 1)])
        own_redis.start()  # an empty Redis: nothing was stored, and the backend reconnects
        [task_id] = await backend.hand_off([BackgroundTask(double, 2)])
        assert await backend.status(task_id) is TaskStatus.QUEUED
        assert await queued(backend) == 1


async def test_the_worker_runs_only_registered_functions(
    backend: StreaqBackend, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Another process (a newer deploy, or someone with access to Redis) stores a
    # call of a function this worker does not know: the worker fails that task,
    # it never imports a name read from Redis.
    other = StreaqBackend(redis_server.url, queue_name=backend.queue_name)
    other.task(name="os.system")(not_registered)
    async with other:
        [task_id] = await other.hand_off([BackgroundTask(not_registered)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_worker, backend)
        with trio.fail_after(30):
            result = await backend.result(task_id)
        nursery.cancel_scope.cancel()
    assert not result.success
    assert str(result.exception) == "Missing function os.system!"
