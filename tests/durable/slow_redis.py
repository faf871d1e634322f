"""A TCP proxy in the test's trio run between a client and a real redis-server.

It forwards every request at once and holds every reply back ``delay``
seconds (changeable while it runs): Redis does what it is asked when it is
asked, and the client hears of it late, which is what a slow network or an
overloaded Redis looks like from the web process. ``silent()`` is a server
that accepts connections and never answers.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio


class SlowProxy:
    """Forwards to ``127.0.0.1:target``; replies arrive ``delay`` seconds late."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.delay = 0.0
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, client: trio.SocketStream) -> None:
        try:
            await self._forward(client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # either side went away: so does the connection

    async def _forward(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target) as redis:
            send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
            async with trio.open_nursery() as nursery:

                async def requests() -> None:
                    async for chunk in client:
                        await redis.send_all(chunk)

                async def replies() -> None:
                    async with send:
                        async for chunk in redis:
                            send.send_nowait((trio.current_time() + self.delay, chunk))

                async def deliver() -> None:
                    async for due, chunk in receive:
                        await trio.sleep_until(due)
                        await client.send_all(chunk)

                for direction in (requests, replies, deliver):
                    nursery.start_soon(_until_broken, direction, nursery.cancel_scope)


async def _until_broken(direction: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    """Run one direction of a connection; when it ends or breaks, end the connection."""
    try:
        await direction()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # a side went away (a killed client, a killed Redis)
    scope.cancel()


async def silent(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept connections and never answer; ``task_status`` gets the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(hold, listeners, handler_nursery=nursery)
