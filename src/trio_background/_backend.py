"""The durable hand-off: what a backend (streaQ on Redis, or another) provides.

The core knows only this protocol; the engine lives behind an extra
(``trio_background.streaq``). A request's tasks whose function the backend
has registered are *handed off*: stored by the engine before the response's
first byte leaves, and run by the engine's workers instead of in process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._tasks import BackgroundTask

__all__ = ["DurableBackend"]


@runtime_checkable
class DurableBackend(Protocol):
    """A durable engine that background tasks can be handed off to."""

    def is_durable(self, func: Callable[..., object]) -> bool:
        """Whether ``func`` is registered with the backend (runs durably)."""
        ...

    async def open(self) -> None:
        """Connect; called at lifespan startup."""
        ...

    async def aclose(self) -> None:
        """Disconnect; called at lifespan shutdown, after the report."""
        ...

    async def hand_off(self, tasks: Sequence[BackgroundTask]) -> list[str]:
        """Store every task durably, in one round trip; return the engine's ids.

        Raises:
            Exception: Anything went wrong; then no task counts as stored.
        """
        ...
