"""What handing one task off to Redis costs a request, against running it in process.

Run it from the project's root (it needs Debian's ``redis-server`` and the
``streaq`` extra, Python 3.11+)::

    python -m bench.durable            # or: python bench/durable.py

One run starts a ``redis-server`` on a free loopback port and real
Hypercorn (trio worker) on ``127.0.0.1:0``, serving a raw ASGI app behind
``BackgroundTasksMiddleware(app, backend=StreaqBackend(...))`` with two
routes: ``/durable`` adds one task of a registered function (stored in Redis
before the response starts), ``/local`` adds one ordinary async task (run
in process after the response). One httpx client sends the requests one at
a time on a kept-alive connection, the two routes interleaved, and times
each from send to the end of the body. A third row times
``backend.hand_off()`` alone for one task: the Redis round trip the
durable route adds. A fourth row serves the same app with
``CeleryBackend`` (Redis as Celery's broker) and times ``/celery``, one
task published to Celery (the ``celery`` extra). No worker runs: the
queues only grow, as a web process sees them.

The table shows the median, 90th and 99th percentile latency per request,
and the difference of the medians: the hand-off's cost per request. The
results also go to ``bench/results/durable.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import trio

from bench._table import aligned

if sys.version_info < (3, 11):  # pragma: no cover
    sys.exit("bench.durable needs Python 3.11+ (streaQ's floor)")

import trio_background
from tests.redis_fixture import RedisServer
from trio_background import BackgroundTask, BackgroundTasksMiddleware, from_scope
from trio_background.streaq import StreaqBackend
from trio_background.testing import open_live_server

if TYPE_CHECKING:
    from collections.abc import MutableMapping

RESULTS = Path(__file__).resolve().parent / "results" / "durable.json"

DURABLE = "durable: one task handed off"
LOCAL = "in process: one async task"
HAND_OFF = "hand_off() alone, one task"
CELERY = "celery: one task published"
CASES = (DURABLE, LOCAL, HAND_OFF, CELERY)


async def durable_job(n: int) -> int:
    return n


async def local_job(n: int) -> int:
    return n


def celery_job(n: int) -> int:
    return n


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()  # startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    job: Any = {"/durable": durable_job, "/celery": celery_job}.get(scope["path"], local_job)
    from_scope(scope).add_task(job, 1)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _time_requests(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    out: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        response = await client.post(path)
        out.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")
    return out


async def measure(redis_url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per request for each case (rounds interleave the cases)."""
    backend = StreaqBackend(redis_url, queue_name="bench")
    backend.task(name="bench.durable.durable_job")(durable_job)  # no worker runs it
    latencies: dict[str, list[float]] = {case: [] for case in CASES}
    per_round = max(1, requests // rounds)
    async with open_live_server(BackgroundTasksMiddleware(app, backend=backend)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for path in ("/durable", "/local"):  # warm-up: connection, imports, Lua functions
                await _time_requests(client, path, min(per_round, 20))
            for _ in range(rounds):
                latencies[DURABLE] += await _time_requests(client, "/durable", per_round)
                latencies[LOCAL] += await _time_requests(client, "/local", per_round)
                for _ in range(per_round):
                    start = time.perf_counter()
                    await backend.hand_off([BackgroundTask(durable_job, 1)])
                    latencies[HAND_OFF].append(time.perf_counter() - start)
        report = await server.shutdown()
    handed_off = report.count("handed_off")
    if handed_off != len(latencies[DURABLE]) + min(per_round, 20):
        raise RuntimeError(f"not every durable task was handed off: {report.summary()}")
    latencies[CELERY] = await _measure_celery(redis_url, requests, min(per_round, 20))
    return latencies


async def _measure_celery(redis_url: str, requests: int, warm_up: int) -> list[float]:
    """The same request with ``CeleryBackend`` (Redis as Celery's broker; no worker)."""
    from celery import Celery

    from trio_background.celery import CeleryBackend

    celery_app = Celery("bench", broker=redis_url, set_as_current=False)
    celery_app.conf.task_default_queue = "bench-celery"
    backend = CeleryBackend(celery_app)
    backend.task(name="bench.durable.celery_job")(celery_job)
    async with open_live_server(BackgroundTasksMiddleware(app, backend=backend)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await _time_requests(client, "/celery", warm_up)
            out = await _time_requests(client, "/celery", requests)
        report = await server.shutdown()
    celery_app.close()
    if report.count("handed_off") != requests + warm_up:
        raise RuntimeError(f"not every Celery task was published: {report.summary()}")
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _table(latencies: dict[str, list[float]]) -> str:
    rows = [("case", "requests", "median ms", "p90 ms", "p99 ms", "vs in process")]
    local = statistics.median(latencies[LOCAL])
    for case, values in latencies.items():
        median = statistics.median(values)
        extra = "-" if case not in (DURABLE, CELERY) else f"+{(median - local) * 1000:.3f} ms"
        rows.append(
            (
                case,
                f"{len(values):,}",
                f"{median * 1000:.3f}",
                f"{_quantile(values, 0.9) * 1000:.3f}",
                f"{_quantile(values, 0.99) * 1000:.3f}",
                extra,
            )
        )
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__)
    parser.add_argument("--requests", type=int, default=2_000, help="per case (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--smoke", action="store_true", help="a few requests: does it run?")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    requests, rounds = (20, 2) if args.smoke else (args.requests, args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        redis = RedisServer(Path(folder))
        redis.start()
        try:
            latencies = trio.run(measure, redis.url, requests, rounds)
        finally:
            redis.stop()
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}, "
          f"trio-background {trio_background.__version__}, Redis on loopback")  # fmt: skip
    print(_table(latencies))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "requests_per_case": requests,
                "rounds": rounds,
                "seconds": latencies,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"bench: results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
