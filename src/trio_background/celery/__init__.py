"""Durable hand-off to Celery workers, for apps that already run Celery.

``add_task`` of a Celery task object (or of a function registered with
:meth:`CeleryBackend.task`) publishes it to Celery's broker before the
response goes out, in a worker thread, instead of running it in this
process; Celery's own workers run it. Needs the ``celery`` extra::

    pip install 'trio-background[celery]'
"""

try:
    import celery  # type: ignore[import-untyped]  # noqa: F401  # pyright: ignore[reportUnusedImport, reportMissingTypeStubs]
except ImportError as _exc:
    raise ImportError(
        "trio_background.celery needs Celery: pip install 'trio-background[celery]'"
    ) from _exc

from ._backend import CeleryBackend as CeleryBackend

__all__ = ["CeleryBackend"]
