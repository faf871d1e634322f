"""A small HTTP/1.1 load generator on trio, for loopback servers only.

It does two things the benchmark needs:

- ``closed_loop``: N keep-alive connections, each sending a request as soon
  as the previous response arrived, for a fixed time; the same shape as
  ``wrk -t1 -cN``, used when wrk is not installed. It runs in its own process
  (``python -m bench.load``) so that it never shares a GIL with the runner.
- ``fire``: exactly COUNT requests over N connections, to leave COUNT
  background tasks in a server; and ``get_json`` for one small request.

Every request is bounded by a timeout, every run by its duration or count.
It speaks just enough HTTP/1.1 for the benchmark apps: GET, responses with a
Content-Length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import trio

__all__ = [
    "LoadError",
    "closed_loop",
    "fire",
    "fire_sync",
    "get_json",
    "get_json_sync",
    "percentile",
]

REQUEST_TIMEOUT = 10.0


class LoadError(Exception):
    """The server answered something the load generator cannot use."""


def percentile(sorted_values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class _Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host.encode()
        self._buffer = bytearray()

    async def get(self, path: str) -> tuple[int, bytes]:
        request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self._host + b"\r\n\r\n"
        await self._stream.send_all(request)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise LoadError(f"response without Content-Length to GET {path}: {head}")
        while len(self._buffer) < length:
            await self._fill()
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return status, body

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _fill(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise LoadError("the server closed the connection")
        self._buffer += data


async def _connect(host: str, port: int) -> _Connection:
    stream = await trio.open_tcp_stream(host, port)
    return _Connection(stream, f"{host}:{port}")


async def closed_loop(
    host: str, port: int, path: str, *, connections: int, duration: float
) -> dict[str, Any]:
    """Keep ``connections`` requests in flight for ``duration`` seconds.

    Returns:
        ``requests``, ``duration_s``, ``errors``, ``p50_ms``, ``p99_ms``,
        ``max_ms`` (the keys wrk's script writes).
    """
    latencies: list[float] = []
    errors = 0
    deadline = trio.current_time() + duration

    async def worker() -> None:
        nonlocal errors
        with trio.move_on_at(deadline + REQUEST_TIMEOUT):
            conn = await _connect(host, port)
            while trio.current_time() < deadline:
                start = time.perf_counter()
                try:
                    status, _ = await conn.get(path)
                except (OSError, LoadError, trio.BrokenResourceError):
                    errors += 1
                    conn = await _connect(host, port)
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1000,
    }


async def fire(host: str, port: int, path: str, *, count: int, connections: int) -> dict[str, Any]:
    """Send exactly ``count`` GET requests over ``connections`` connections.

    Raises:
        LoadError: A response was not 200.
    """
    remaining = count
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal remaining
        conn = await _connect(host, port)
        while remaining > 0:
            remaining -= 1
            status, body = await conn.get(path)
            if status != 200:
                raise LoadError(f"GET {path} answered {status}: {body[:200]!r}")
        await conn._stream.aclose()  # pyright: ignore[reportPrivateUsage]

    async with trio.open_nursery() as nursery:
        for _ in range(min(connections, count)):
            nursery.start_soon(worker)
    return {"requests": count, "duration_s": time.perf_counter() - started}


async def get_json(host: str, port: int, path: str) -> Any:
    """One GET on a new connection; the decoded JSON body."""
    conn = await _connect(host, port)
    try:
        status, body = await conn.get(path)
    finally:
        await conn.aclose()
    if status != 200:
        raise LoadError(f"GET {path} answered {status}: {body[:200]!r}")
    return json.loads(body)


def fire_sync(
    port: int, path: str, *, count: int, connections: int, timeout: float
) -> dict[str, Any]:
    """:func:`fire` at 127.0.0.1 from sync code, bounded by ``timeout`` seconds."""

    async def bounded() -> dict[str, Any]:
        with trio.fail_after(timeout):
            return await fire("127.0.0.1", port, path, count=count, connections=connections)

    return trio.run(bounded)


def get_json_sync(port: int, path: str, *, timeout: float = REQUEST_TIMEOUT) -> Any:
    """:func:`get_json` at 127.0.0.1 from sync code, bounded by ``timeout`` seconds."""

    async def bounded() -> Any:
        with trio.fail_after(timeout):
            return await get_json("127.0.0.1", port, path)

    return trio.run(bounded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load generator only targets loopback servers")
    result = trio.run(
        lambda: closed_loop(
            args.host,
            args.port,
            args.path,
            connections=args.connections,
            duration=args.duration,
        )
    )
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
