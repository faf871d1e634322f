"""Durable hand-off: chosen background tasks go to streaQ workers through Redis.

``add_task`` of a function registered with :meth:`StreaqBackend.task` stores
the call in Redis (streaQ's streams) before the response goes out, instead of
running it in this process; workers started with ``python -m
trio_background.streaq worker MODULE:BACKEND`` run it on trio, and another
worker takes it over if one dies. Needs the ``streaq`` extra (Python 3.11+)::

    pip install 'trio-background[streaq]'
"""

try:
    import streaq  # noqa: F401  # pyright: ignore[reportUnusedImport]  # the extra
except ImportError as _exc:
    raise ImportError(
        "trio_background.streaq needs streaQ (Python 3.11+): pip install 'trio-background[streaq]'"
    ) from _exc

from ._backend import StreaqBackend as StreaqBackend

__all__ = ["StreaqBackend"]
